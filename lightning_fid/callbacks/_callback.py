"""GenerativeMetrics: FID / KID / CMMD and the other metrics of a generator, measured while it trains.

The Lightning glue only: hooks, schedule, which weights are scored, logging and state. Everything
else (sampling, extraction, merge, reference statistics, metric math) is the engine's
:class:`~lightning_fid.engine.Evaluator`, which this callback calls and which never calls back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from typing_extensions import override

from lightning_fid.callbacks._evaluation import check_final_seeds, evaluate_and_log, final_evaluation, test_evaluation
from lightning_fid.callbacks._history import History
from lightning_fid.callbacks._run import RunState
from lightning_fid.callbacks._schedule import Cadence
from lightning_fid.callbacks._stages import (
    check_own_keys,
    check_siblings,
    fast_dev_run,
    find_legacy_state,
    prepare,
    start_fit,
    start_training,
)
from lightning_fid.callbacks._weights import WeightsChoice, check_choice, raw_snapshot_needed, resolve_choice
from lightning_fid.engine import Evaluator, StatsCache
from lightning_fid.engine._images import InputRange
from lightning_fid.engine._labels import LabelPolicy
from lightning_fid.engine._sampling import SampleFn, make_sampler
from lightning_fid.extractors.weights import cache_dir as default_cache_root
from lightning_fid.metrics.base import Metric
from lightning_fid.protocols import DEFAULT_PROTOCOL


class GenerativeMetrics(Callback):
    r"""Log FID / KID / CMMD (and more) of a generator while it trains, exactly and identically on every rank.

    Args:
        real: the reference data: a :class:`~lightning_fid.RealData` (which also says how to read it),
            or a DataLoader, a Dataset, a callable returning either, ``"train"`` / ``"val"`` (the
            trainer's loaders), an image folder, or a reference file (ADM/EDM/pytorch-fid/clean-fid .npz, EDM2 .pkl).
        sample_fn: ``sample_fn(module, batch_size, generator) -> images`` (NCHW in ``input_range``);
            ``generator`` is a seeded CPU ``torch.Generator``. It may declare keyword parameters
            ``index`` (the batch's global sample indices) and ``conditions`` (its slice of
            ``conditions``). Optional if the module defines ``sample_images(batch_size, generator)``.
        metrics: metric names (``"fid"``, ``"sfid"``, ``"kid"``, ``"cmmd"``, ``"is"``, ``"precision"``,
            ``"recall"``, ``"density"``, ``"coverage"``, ``"fid_inf"``, ``"fd_dinov2"``, ``"fid_per_class"``,
            ``"intra_fid"``) or :class:`~lightning_fid.metrics.Metric` objects with their options,
            e.g. ``KID(subset_size=500)``, your own subclasses included (default: the protocol's).
        protocol: ``"torch-fidelity"`` (default), ``"adm"``, ``"edm2"`` or ``"pytorch-fid"``: the metrics,
            options and preprocessing of a family of papers (:mod:`lightning_fid.protocols`); explicit
            options override it and the protocol card records each deviation.
        feature_extractor: the network of metrics that read Inception-v3's pool features, when they
            have no ``extractor`` of their own (default: :class:`~lightning_fid.InceptionV3`).
        num_samples: generated samples per evaluation (fixed noise, so evaluations are comparable).
        batch_size: sampling batch size (also the real-data batch size).
        seed: seed of the fixed noise (and of metrics' own random draws unless they set one).
        every_n_epochs: evaluate epochs where ``(epoch + 1) % every_n_epochs == 0``, at their
            validation or else their training epoch end (default 1).
        every_n_steps: instead, evaluate whenever ``trainer.global_step`` reaches a multiple of this.
        weights: ``"auto"`` (the averaged weights when a ``WeightAveraging`` callback such as
            ``EMAWeightAveraging`` is present, else the raw ones), ``"raw"``, ``"averaged"``, or
            ``"both"`` (averaged under the normal keys, raw under ``<key>_raw``).
        conditions: one entry per generated sample (labels tensor, list of prompts, ...); sample
            ``i`` always gets ``conditions[i]``, passed to the sampler as ``conditions=``. Or a label
            policy with ``num_classes``: ``"uniform"`` (a random class per sample, as DiT) or
            ``"balanced"`` (N / num_classes per class, as VAR / MAR).
        num_classes: the generator's number of classes, for ``conditions="uniform"`` / ``"balanced"``.
        sample_autocast: sample under ``torch.autocast`` with this dtype (extraction stays exact).
        input_range: range of generated images: ``(-1, 1)``, ``(0, 1)`` or ``"uint8"``.
        range_check: refuse, before training, generated float images that fill only the upper half of
            ``input_range`` (``RealData(range_check=...)`` does the same for real images).
        prefix: prepended to every logged key; two callbacks on one trainer need different prefixes.
        final_num_samples: if set, one more evaluation with this many samples at the end of fit,
            logged as ``final_<key>`` (also the sample count of ``trainer.test``).
        final_seeds: repeat that evaluation with this many noise seeds (``seed``, ``seed + 1``, ...):
            ``final_<key>`` is then their mean, with ``final_std_<key>``, ``final_min_<key>`` (EDM's
            practice) and ``final_max_<key>``.
        log_images: number of fixed-noise samples shown as a grid each evaluation (0: none).
        cache_dir: where reference statistics are cached (default: ``$LIGHTNING_FID_HOME/stats``).
        use_cache: False reads the real data at every fit.
        progress: show progress bars on rank 0.
        prog_bar: show the first metric's latest value in Lightning's progress bar.
        dry_run_samples: samples drawn before training to check the whole chain (default: one batch).
        error_bars: log ``<key>_se`` (jackknife over 10 sample groups; an int: that many) and the paired
            ``<key>_vs_best`` / ``<key>_vs_best_se`` to the best evaluation so far; False: neither.

    Raises:
        ValueError: before any network is loaded, for every option that cannot work (unknown metric,
            two metrics on one key, a metric option the sample counts cannot satisfy, ...), naming
            the option to change.

    Example::

        metrics = GenerativeMetrics(real=RealData(val_set, image_key="image"), sample_fn=sample,
                                    metrics=["fid", KID(subset_size=500)], every_n_steps=5000)
    """

    def __init__(
        self,
        real: Any,
        sample_fn: SampleFn | None = None,
        metrics: Sequence[str | Metric] | None = None,
        feature_extractor: nn.Module | None = None,
        num_samples: int = 10_000,
        batch_size: int = 250,
        seed: int = 0,
        every_n_epochs: int | None = None,
        every_n_steps: int | None = None,
        weights: WeightsChoice = "auto",
        conditions: Sequence[Any] | str | LabelPolicy | None = None,
        sample_autocast: torch.dtype | None = None,
        input_range: InputRange = (-1.0, 1.0),
        range_check: bool = True,
        prefix: str = "",
        final_num_samples: int | None = None,
        log_images: int = 16,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        progress: bool = True,
        prog_bar: bool = False,
        dry_run_samples: int | None = None,
        protocol: str = DEFAULT_PROTOCOL,
        num_classes: int | None = None,
        final_seeds: int = 1,
        error_bars: bool | int = True,
    ) -> None:
        super().__init__()
        self.evaluator = Evaluator(
            real,
            metrics,
            protocol=protocol,
            num_classes=num_classes,
            sample_fn=sample_fn,
            feature_extractor=feature_extractor,
            num_samples=num_samples,
            batch_size=batch_size,
            seed=seed,
            input_range=input_range,
            conditions=conditions,
            sample_autocast=sample_autocast,
            grid_size=log_images,
            progress=progress,
            dry_run_samples=dry_run_samples,
            cache=StatsCache(cache_dir or default_cache_root() / "stats") if use_cache else None,
            range_check=range_check,
            final_num_samples=final_num_samples,
            error_bars=error_bars,
        )
        default_epochs = 1 if every_n_epochs is None and every_n_steps is None else every_n_epochs
        self.cadence = Cadence(default_epochs, every_n_steps)
        self.weights = check_choice(weights)
        self.prefix, self.prog_bar, self.final_num_samples = prefix, prog_bar, final_num_samples
        self.final_seeds = check_final_seeds(final_seeds, final_num_samples)
        self.run = RunState(History(prefix))
        self.card: dict[str, Any] | None = None  # the protocol card, once the reference is known
        self._resumed_card: dict[str, Any] | None = None
        self._choices: tuple[str, ...] = ("raw",)
        check_own_keys(self)

    @property
    def metrics(self) -> tuple[Metric, ...]:
        """The metric objects."""
        return self.evaluator.metrics

    @property
    def final_metrics(self) -> dict[str, float]:
        """The ``final_num_samples`` evaluation at the end of fit, as logged (also after ``ddp_spawn``)."""
        return self.run.history.final

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every evaluation's float64 values with ``epoch`` and ``step`` (also after ``ddp_spawn``)."""
        return self.run.history.entries

    best = property(lambda self: self.run.best, doc="The first metric's best main value so far (by its direction).")

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)  # stable when metrics change: the history survives

    def keys(self) -> list[str]:
        """Every metric key this callback logs (what EarlyStopping / ModelCheckpoint may monitor)."""
        names = self.evaluator.keys()
        if self.weights == "both":
            names += [name + "_raw" for name in names]
        return [self.prefix + name for name in names]

    def should_evaluate(self, trainer: pl.Trainer) -> bool:
        """Whether the current epoch or step is due (override for another schedule; monitors are
        checked against the default one)."""
        if trainer.sanity_checking:
            return False
        if self.cadence.by_steps:
            return self.cadence.step_due(trainer.global_step, self.run.last_step)
        return self.cadence.epoch_due(trainer.current_epoch)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check keys and files against sibling callbacks, build the networks and check the sampler."""
        check_siblings(self, trainer)
        make_sampler(self.evaluator.sample_fn, pl_module)
        if stage == "fit":
            self.run.reset()
            self.evaluator.reset()  # networks described again: their weights may have changed
        self.evaluator.build()
        self._choices = resolve_choice(self.weights, trainer, fitting=stage == "fit")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start_fit(self, trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start_training(self, trainer, pl_module)
        self.run.last_step = trainer.global_step  # a resumed run continues the schedule, no extra evaluation

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.evaluator.reference is None and trainer.state.fn == TrainerFn.VALIDATING:  # validate() alone
            prepare(self.evaluator, trainer, pl_module)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.evaluator.reference is None:
            prepare(self.evaluator, trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or fast_dev_run(trainer):
            return
        if trainer.state.fn == TrainerFn.VALIDATING:  # trainer.validate(): its own keys, not the training history
            evaluate_and_log(self, trainer, pl_module, in_validation=True, stage="validate/")
        elif not self.cadence.by_steps and self.should_evaluate(trainer):
            evaluate_and_log(self, trainer, pl_module, in_validation=True)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.cadence.by_steps and self.should_evaluate(trainer) and not fast_dev_run(trainer):
            evaluate_and_log(self, trainer, pl_module, on_step=True)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs this before EarlyStopping's and ModelCheckpoint's on_train_epoch_end. A due
        # epoch without a validation run is evaluated here.
        evaluated = self.run.last_evaluated is not None and self.run.last_evaluated[0] == trainer.current_epoch
        if not self.cadence.by_steps and self.should_evaluate(trainer) and not evaluated and not fast_dev_run(trainer):
            evaluate_and_log(self, trainer, pl_module)
        if self.final_num_samples is not None and raw_snapshot_needed(self._choices, trainer, self):
            self.run.raw_snapshot = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        test_evaluation(self, trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.final_num_samples is not None and not fast_dev_run(trainer):
            final_evaluation(self, trainer, pl_module)

    def evaluate(
        self, pl_module: nn.Module, num_samples: int | None = None
    ) -> tuple[dict[str, float], torch.Tensor | None]:
        """(values, grid on rank 0) of the module's current weights; also outside ``fit`` (collective)."""
        return self.evaluator.evaluate(pl_module, num_samples)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**self.run.state_dict(self.evaluator), "card": self.card}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # conflicts with the constructor warn
        self.run.load_state_dict(state_dict, self.evaluator)
        self._resumed_card = state_dict.get("card") if isinstance(state_dict.get("card"), dict) else None

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        legacy = find_legacy_state(checkpoint, self.state_key, self.prefix)  # 0.1 keyed the state by metrics too
        if legacy is not None:
            self.load_state_dict(legacy)
