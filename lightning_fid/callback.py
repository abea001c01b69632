"""GenerativeMetrics: FID / KID / CMMD of a generative model, measured while it trains.

The Lightning glue only: hooks, schedule, logging and state. What each metric needs comes from
:mod:`lightning_fid.registry`; the data walk (sample, quantise, extract, accumulate, merge) is
:mod:`lightning_fid.pipeline`; reference statistics are :func:`lightning_fid.reference.resolve_reference`;
when to evaluate is :mod:`lightning_fid.schedule`, monitor safety :mod:`lightning_fid.monitors`,
which weights :mod:`lightning_fid.averaging`, RNG and precision hygiene :mod:`lightning_fid.hygiene`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from typing_extensions import override

from lightning_fid import registry
from lightning_fid.averaging import WeightsChoice, evaluate_weights, raw_snapshot_needed, resolve_choice
from lightning_fid.cache import StatsCache
from lightning_fid.evaluator import Evaluator
from lightning_fid.extractors.weights import cache_dir as default_cache_root
from lightning_fid.history import History, restore_state
from lightning_fid.images import InputRange
from lightning_fid.monitors import check_monitors
from lightning_fid.real import RealOptions
from lightning_fid.reference import Reference
from lightning_fid.reporting import log_grid, log_values
from lightning_fid.sampling import SampleFn, make_sampler
from lightning_fid.schedule import Cadence, check_schedule


def _trainer_loader(trainer: pl.Trainer, pl_module: pl.LightningModule, which: str) -> Any:
    """The trainer's ``train`` / ``val`` loader (its first one when it has several)."""
    method = f"{which}_dataloader"
    if trainer.datamodule is not None and is_overridden(method, trainer.datamodule):
        loader = getattr(trainer.datamodule, method)()
    elif is_overridden(method, pl_module):
        loader = getattr(pl_module, method)()
    else:  # loaders handed to fit / validate directly, once Lightning has set them up
        loader = trainer.train_dataloader if which == "train" else trainer.val_dataloaders
        if loader is None:
            raise ValueError(
                f"real={which!r} but neither a datamodule nor the LightningModule defines {method}() (loaders passed "
                f"to trainer.fit are not set up yet when reference statistics are computed): pass the loader "
                f"itself as real=..."
            )
    return loader[0] if isinstance(loader, (list, tuple)) else loader


class GenerativeMetrics(Callback):
    """Log FID / KID / CMMD of a generator at validation time, exactly and identically on every rank.

    Args:
        real: reference data: a DataLoader, a Dataset, a callable returning either, ``"train"`` /
            ``"val"`` (the trainer's loaders), an image folder, or a .npz statistics file (FID only).
        sample_fn: ``sample_fn(module, batch_size, generator) -> images`` (NCHW in ``input_range``);
            ``generator`` is a seeded CPU ``torch.Generator``. It may declare keyword parameters
            ``index`` (int64 global sample indices of the batch) and ``conditions`` (the batch's
            slice of ``conditions``). Optional if the LightningModule defines
            ``sample_images(batch_size, generator[, index=][, conditions=])``.
        metrics: names from the metric table: ``"fid"``, ``"kid"``, ``"cmmd"``, ``"is"``, ``"precision"``,
            ``"recall"``, ``"density"``, ``"coverage"``, ``"fid_inf"``, ``"fd_dinov2"``, ``"fid_per_class"``
            (logs ``fid/class_<c>``), ``"intra_fid"``.
        feature_extractor: module for FID/KID features (default: :class:`InceptionV3`).
        cmmd_extractor: module for CMMD embeddings (default: :class:`CLIP`).
        dinov2_extractor: module for FD-DINOv2 features (default: :class:`~lightning_fid.extractors.DINOv2`).
        num_samples: generated samples per evaluation (fixed noise, so evaluations are comparable).
        batch_size: sampling batch size (also the real-data batch size).
        seed: seed of the fixed noise (and of KID's subsets).
        every_n_epochs: evaluate epochs where ``(epoch + 1) % every_n_epochs == 0`` (Lightning's
            convention), at their validation or, without one, at their training epoch end (default 1).
        every_n_steps: instead, evaluate whenever ``trainer.global_step`` reaches a multiple of this.
        weights: ``"auto"`` (the averaged weights when a ``WeightAveraging`` callback such as
            ``EMAWeightAveraging`` is present, else the raw ones), ``"raw"``, ``"averaged"``, or
            ``"both"`` (averaged under the normal keys, raw under ``<key>_raw``).
        conditions: a sequence (labels tensor, list of prompts, ...) with one entry per generated
            sample; sample ``i`` always gets ``conditions[i]``, passed to the sampler as ``conditions=``.
        sample_autocast: run the generator under ``torch.autocast`` with this dtype (e.g.
            ``torch.bfloat16``) for speed; feature extraction always runs in full precision.
        input_range: range of generated images: ``(-1, 1)``, ``(0, 1)`` or ``"uint8"``.
        real_input_range: range of real images (default: ``input_range``; uint8 tensors always work).
        range_check: refuse, before training, float images (real or generated) that fill only the upper
            half of their declared range, the signature of [0, 1] images declared as (-1, 1). Set False
            for an unusual but correct range.
        num_real: number of real samples (default: all), each used once across ranks.
        image_key: which entry of dict / tuple real batches holds the images (default: the first
            tensor, or a dict key among ``image``, ``images``, ``img``, ``x``).
        transform: ``transform(batch) -> images`` for real batches that need more than picking.
        label_key: which entry of real batches holds integer class labels (``"fid_per_class"``,
            ``"intra_fid"``); the generated samples' labels are ``conditions``.
        reference_id: a name for this exact real data and its reading; the statistics cache is keyed by
            it instead of by inspecting the data (needed to cache when ``transform`` is a lambda).
        prefix: prepended to every logged key.
        names: rename logged keys, e.g. ``{"cmmd": "mmd"}`` when the CMMD machinery runs on a domain
            encoder instead of CLIP (then it is an RBF-kernel MMD, not CMMD).
        kid_subsets: number of KID subsets (torch-fidelity's 100).
        kid_subset_size: samples per KID subset (torch-fidelity's 1000).
        cmmd_sigma: CMMD's kernel bandwidth (reference: 10).
        cmmd_scale: CMMD's output scale (reference: 1000).
        is_splits: Inception Score splits over the fixed sample order (reference: 10).
        pr_k: k of precision / recall (Kynkäänniemi et al.: 3).
        dc_k: k of density / coverage (Naeem et al.: 5).
        fid_inf_points: sample sizes of FID-infinity's fit (Chong & Forsyth: 15).
        cache_dir: where real statistics are cached (default: ``$LIGHTNING_FID_HOME/stats``).
        use_cache: False reads the real data at every fit.
        log_images: number of fixed-noise samples shown as a grid each evaluation (0: none).
        final_num_samples: if set, one more evaluation with this many samples at the end of fit,
            logged as ``final_<metric>`` (also the sample count of ``trainer.test``).
        progress: show progress bars on rank 0.
        dry_run_samples: samples drawn before training to check the whole chain (default: one full
            batch, so problems that only a full batch shows appear before training).
    """

    def __init__(
        self,
        real: Any,
        sample_fn: SampleFn | None = None,
        metrics: Sequence[str] = ("fid",),
        feature_extractor: nn.Module | None = None,
        cmmd_extractor: nn.Module | None = None,
        dinov2_extractor: nn.Module | None = None,
        num_samples: int = 10_000,
        batch_size: int = 250,
        seed: int = 0,
        every_n_epochs: int | None = None,
        every_n_steps: int | None = None,
        weights: WeightsChoice = "auto",
        conditions: Sequence[Any] | None = None,
        sample_autocast: torch.dtype | None = None,
        input_range: InputRange = (-1.0, 1.0),
        real_input_range: InputRange | None = None,
        range_check: bool = True,
        num_real: int | None = None,
        image_key: str | int | None = None,
        transform: Callable[[Any], torch.Tensor] | None = None,
        reference_id: str | None = None,
        label_key: str | int | None = None,
        prefix: str = "",
        names: dict[str, str] | None = None,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        cmmd_sigma: float = 10.0,
        cmmd_scale: float = 1000.0,
        is_splits: int = 10,
        pr_k: int = 3,
        dc_k: int = 5,
        fid_inf_points: int = 15,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        log_images: int = 16,
        final_num_samples: int | None = None,
        progress: bool = True,
        dry_run_samples: int | None = None,
    ) -> None:
        super().__init__()
        self.evaluator = Evaluator(
            real=real, metrics=metrics, sample_fn=sample_fn,
            extractors={"features": feature_extractor, "cmmd": cmmd_extractor, "dinov2": dinov2_extractor},
            num_samples=num_samples,
            batch_size=batch_size, seed=seed, input_range=input_range,
            real_options=RealOptions(input_range=real_input_range if real_input_range is not None else input_range,
                                     batch_size=batch_size, num_real=num_real, image_key=image_key, transform=transform,
                                     range_check=range_check, reference_id=reference_id, label_key=label_key),
            options=registry.MetricOptions(kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed,
                                           cmmd_sigma=cmmd_sigma, cmmd_scale=cmmd_scale, is_splits=is_splits,
                                           pr_k=pr_k, dc_k=dc_k, fid_inf_points=fid_inf_points),
            conditions=conditions, sample_autocast=sample_autocast,
            cache=StatsCache(cache_dir or default_cache_root() / "stats") if use_cache else None,
            grid_size=log_images, progress=progress, dry_run_samples=dry_run_samples, range_check=range_check,
        )  # fmt: skip
        default_epochs = 1 if every_n_epochs is None and every_n_steps is None else every_n_epochs
        self.cadence = Cadence(default_epochs, every_n_steps)
        self.weights = weights
        self.prefix = prefix
        self.names = dict(names or {})
        self.final_num_samples = final_num_samples
        if final_num_samples is not None and final_num_samples < num_samples:
            raise ValueError("final_num_samples should be larger than num_samples (it is the end-of-fit evaluation)")
        unknown = set(self.names) - set(registry.metric_keys(self.metrics)) - {"eval_seconds"}
        if unknown:
            raise ValueError(f"names= renames {sorted(unknown)}, which these metrics do not log")
        self.evaluator.check_conditions(max(num_samples, final_num_samples or 0))
        # run state
        self._history = History(prefix)
        self.best: float | None = None
        self._choices: tuple[str, ...] = ("raw",)
        self._last_evaluated: tuple[int, int] | None = None
        self._last_step: int | None = None
        self._raw_snapshot: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ what the evaluator owns
    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric names."""
        return self.evaluator.metrics

    @property
    def num_samples(self) -> int:
        """Generated samples per evaluation."""
        return self.evaluator.num_samples

    @property
    def seed(self) -> int:
        """Seed of the fixed noise (restored from a checkpoint on resume)."""
        return self.evaluator.seed

    @property
    def slots(self) -> list:
        """The extractor slots (after ``setup``)."""
        return self.evaluator.slots

    @property
    def reference(self) -> Reference | None:
        """The resolved reference statistics (after the run's preparation)."""
        return self.evaluator.reference

    @property
    def final_metrics(self) -> dict[str, float]:
        """The ``final_num_samples`` evaluation at the end of fit, as logged (also after ``ddp_spawn``)."""
        return self._history.final

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every evaluation's float64 values with ``epoch`` and ``step`` (also after ``ddp_spawn``)."""
        return self._history.entries

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix, metrics=self.metrics)

    def key(self, name: str) -> str:
        """The logged key of a value: prefix + its (possibly renamed) name."""
        return self.prefix + self.names.get(name, name)

    def keys(self) -> list[str]:
        """Logged metric keys (what EarlyStopping / ModelCheckpoint may monitor)."""
        names = registry.metric_keys(self.metrics)
        if self.weights == "both":
            names += [name + "_raw" for name in names]
        return [self.key(name) for name in names]

    # ------------------------------------------------------------------ schedule
    def should_evaluate(self, trainer: pl.Trainer) -> bool:
        """Whether the current epoch (epoch cadence) or step (step cadence) is due. Override for
        another schedule; :mod:`lightning_fid.monitors` checks monitors against the default one."""
        if trainer.sanity_checking:
            return False
        if self.cadence.by_steps:
            return self.cadence.step_due(trainer.global_step, self._last_step)
        return self.cadence.epoch_due(trainer.current_epoch)

    def evaluated_now(self, trainer: pl.Trainer) -> bool:
        """True right after an evaluation, until the trainer moves to another epoch or step."""
        return self._last_evaluated == (trainer.current_epoch, trainer.global_step)

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Build extractors (resolving weights: fails fast when missing) and check the sampler."""
        make_sampler(self.evaluator.sample_fn, pl_module)
        self.evaluator.build(shared=[slot for peer in self._peers(trainer) for slot in peer.slots])
        self._choices = resolve_choice(self.weights, trainer, fitting=stage == "fit")
        if stage == "fit":  # a new run (a resumed one gets its state back from the checkpoint after this)
            self._history.reset()
            self.best = None
            self._last_evaluated = None
            self._last_step = None
            self._raw_snapshot = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._prepare(trainer, pl_module)
        check_monitors(trainer, set(self.keys()), self.cadence)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_schedule(self.cadence, trainer, is_overridden("validation_step", pl_module))
        self._last_step = trainer.global_step  # a resumed run continues the schedule, no extra evaluation

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.reference is None:  # trainer.validate() without fit
            self._prepare(trainer, pl_module)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.reference is None:
            self._prepare(trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.VALIDATING or (not self.cadence.by_steps and self.should_evaluate(trainer)):
            self._evaluate_and_log(trainer, pl_module, in_validation=True)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.cadence.by_steps and self.should_evaluate(trainer):
            self._evaluate_and_log(trainer, pl_module, on_step=True)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs this before EarlyStopping's and ModelCheckpoint's on_train_epoch_end. A due
        # epoch without a validation run is evaluated here.
        evaluated = self._last_evaluated is not None and self._last_evaluated[0] == trainer.current_epoch
        if not self.cadence.by_steps and self.should_evaluate(trainer) and not evaluated:
            self._evaluate_and_log(trainer, pl_module)
        if self.final_num_samples is not None and raw_snapshot_needed(self._choices, trainer, self):
            self._raw_snapshot = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        values, _ = self._evaluate_choices(trainer, pl_module, self.final_num_samples or self.num_samples)
        log_values(trainer, pl_module, {"test/" + self.key(k): v for k, v in values.items()})

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.final_num_samples is None:
            return
        values, _ = self._evaluate_choices(trainer, pl_module, self.final_num_samples, final=True)
        self._raw_snapshot = None
        final = {self.prefix + "final_" + self.names.get(k, k): v for k, v in values.items()}
        self._history.set_final(final, trainer)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(final, step=trainer.global_step)

    # ------------------------------------------------------------------ preparation and evaluation
    def _peers(self, trainer: pl.Trainer | None) -> list[GenerativeMetrics]:
        callbacks = trainer.callbacks if trainer is not None else []
        return [cb for cb in callbacks if isinstance(cb, GenerativeMetrics) and cb is not self]

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Everything before training: the evaluator's dry run and reference statistics, reusing what
        other GenerativeMetrics on this trainer already resolved."""
        named = {which: partial(_trainer_loader, trainer, pl_module, which) for which in ("train", "val")}
        known = {peer.reference.key: peer.reference for peer in self._peers(trainer) if peer.reference is not None}
        self.evaluator.prepare(pl_module, named=named, known=known)

    def evaluate(
        self, pl_module: nn.Module, num_samples: int | None = None
    ) -> tuple[dict[str, float], torch.Tensor | None]:
        """Metrics of ``num_samples`` (default ``num_samples``) fixed-noise samples of the module's
        current weights. A collective call. Works outside ``fit`` too (notebooks, scripts), on a
        LightningModule or any ``nn.Module`` with ``sample_images`` (or given ``sample_fn``): it
        prepares extractors and reference statistics on first use. Returns (values, grid on rank 0)."""
        return self.evaluator.evaluate(pl_module, num_samples)

    def _evaluate_choices(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, num_samples: int, in_validation: bool = False,
        final: bool = False,
    ) -> tuple[dict[str, float], torch.Tensor | None]:  # fmt: skip
        snapshot = self._raw_snapshot if final else None
        return evaluate_weights(lambda: self.evaluate(pl_module, num_samples), self._choices, trainer, pl_module, self,
                                in_validation, snapshot)  # fmt: skip

    def _evaluate_and_log(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, in_validation: bool = False, on_step: bool = False
    ) -> None:
        start = time.perf_counter()
        values, grid = self._evaluate_choices(trainer, pl_module, self.num_samples, in_validation)
        values["eval_seconds"] = time.perf_counter() - start
        log_values(trainer, pl_module, {self.key(k): v for k, v in values.items()}, on_step=on_step)
        self._last_evaluated = (trainer.current_epoch, trainer.global_step)
        self._last_step = trainer.global_step
        self._record(trainer, values)
        if grid is not None and trainer.is_global_zero:
            log_grid(trainer, grid, f"{self.prefix}samples", trainer.global_step, trainer.current_epoch)

    def _record(self, trainer: pl.Trainer, values: dict[str, float]) -> None:
        self._history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **values}, trainer)
        main = values.get(self.metrics[0], math.nan)
        lower = registry.METRICS[self.metrics[0]].lower_is_better
        if not math.isnan(main) and (self.best is None or (main < self.best if lower else main > self.best)):
            self.best = main

    # ------------------------------------------------------------------ checkpointing
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "best": self.best, "seed": self.seed, "num_samples": self.num_samples,
                "metrics": list(self.metrics),
                "real_key": self.reference.key if self.reference is not None else None}  # fmt: skip

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore history, best value and the noise seed; conflicts with the constructor warn."""
        history, self.best, seed = restore_state(state_dict, self.seed, self.metrics, self.num_samples)
        self._history.replace(history)
        self.evaluator.seed = seed
