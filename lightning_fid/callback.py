"""GenerativeMetrics: FID / KID / CMMD of a generative model, measured while it trains.

The Lightning glue only: hooks, schedule, logging and state. What each metric needs comes from
:mod:`lightning_fid.registry`; the data walk (sample, quantise, extract, accumulate, merge) is
:mod:`lightning_fid.pipeline`; reference statistics are :func:`lightning_fid.reference.resolve_reference`;
monitor safety is :mod:`lightning_fid.monitors`.
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
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from typing_extensions import override

from lightning_fid import registry
from lightning_fid.cache import StatsCache
from lightning_fid.distributed import rank_and_world
from lightning_fid.extractors.weights import cache_dir as default_cache_root
from lightning_fid.image_logging import log_grid
from lightning_fid.images import InputRange
from lightning_fid.monitors import Cadence, check_monitors
from lightning_fid.pipeline import Slot, build_slots, dry_run, sample_and_extract
from lightning_fid.real import RealOptions
from lightning_fid.reference import Reference, is_statistics_file, resolve_reference
from lightning_fid.sampling import SampleFn

SAMPLE_METHOD = "sample_images"  # LightningModule.sample_images(batch_size, generator) -> images


def _sample_with_method(module: nn.Module, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """The sampler used when no ``sample_fn`` is given: the module's own ``sample_images``."""
    return getattr(module, SAMPLE_METHOD)(batch_size, generator)


def _trainer_loader(trainer: pl.Trainer, pl_module: pl.LightningModule, which: str) -> Any:
    """The trainer's ``train`` / ``val`` loader (its first one when it has several)."""
    method = f"{which}_dataloader"
    if trainer.datamodule is not None and is_overridden(method, trainer.datamodule):
        loader = getattr(trainer.datamodule, method)()
    elif is_overridden(method, pl_module):
        loader = getattr(pl_module, method)()
    else:
        raise ValueError(f"real={which!r} but neither a datamodule nor the LightningModule defines {method}()")
    return loader[0] if isinstance(loader, (list, tuple)) else loader


class GenerativeMetrics(Callback):
    """Log FID / KID / CMMD of a generator at validation time, exactly and identically on every rank.

    Args:
        real: reference data: a DataLoader, a Dataset, a callable returning either, ``"train"`` /
            ``"val"`` (the trainer's loaders), an image folder, or a .npz statistics file (FID only).
        sample_fn: ``sample_fn(module, batch_size, generator) -> images`` (NCHW in ``input_range``);
            ``generator`` is a seeded CPU ``torch.Generator``. Optional if the LightningModule
            defines ``sample_images(batch_size, generator)``.
        metrics: names from the metric table, any of ``("fid", "kid", "cmmd")``.
        feature_extractor: module for FID/KID features (default: :class:`InceptionV3`).
        cmmd_extractor: module for CMMD embeddings (default: :class:`CLIP`).
        num_samples: generated samples per evaluation (fixed noise, so evaluations are comparable).
        batch_size: sampling batch size (also the real-data batch size).
        seed: seed of the fixed noise (and of KID's subsets).
        every_n_epochs: evaluate at validation epochs where ``(epoch + 1) % every_n_epochs == 0``,
            Lightning's convention (``check_val_every_n_epoch``, ``ModelCheckpoint(every_n_epochs)``).
        input_range: range of generated images: ``(-1, 1)``, ``(0, 1)`` or ``"uint8"``.
        real_input_range: range of real images (default: ``input_range``; uint8 tensors always work).
        num_real: number of real samples (default: all), each used once across ranks.
        image_key: which entry of dict / tuple real batches holds the images (default: the first
            tensor, or a dict key among ``image``, ``images``, ``img``, ``x``).
        transform: ``transform(batch) -> images`` for real batches that need more than picking.
        prefix: prepended to every logged key.
        names: rename logged keys, e.g. ``{"cmmd": "mmd"}`` when the CMMD machinery runs on a domain
            encoder instead of CLIP (then it is an RBF-kernel MMD, not CMMD).
        kid_subsets: number of KID subsets (torch-fidelity's 100).
        kid_subset_size: samples per KID subset (torch-fidelity's 1000).
        cmmd_sigma: CMMD's kernel bandwidth (reference: 10).
        cmmd_scale: CMMD's output scale (reference: 1000).
        cache_dir: where real statistics are cached (default: ``$LIGHTNING_FID_HOME/stats``).
        use_cache: False reads the real data at every fit.
        log_images: number of fixed-noise samples shown as a grid each evaluation (0: none).
        final_num_samples: if set, one more evaluation with this many samples at the end of fit,
            logged as ``final_<metric>``.
        progress: show progress bars on rank 0.
        dry_run_samples: samples drawn before training to check the whole chain (at least 2).
    """

    def __init__(
        self,
        real: Any,
        sample_fn: SampleFn | None = None,
        metrics: Sequence[str] = ("fid",),
        feature_extractor: nn.Module | None = None,
        cmmd_extractor: nn.Module | None = None,
        num_samples: int = 10_000,
        batch_size: int = 250,
        seed: int = 0,
        every_n_epochs: int = 1,
        input_range: InputRange = (-1.0, 1.0),
        real_input_range: InputRange | None = None,
        num_real: int | None = None,
        image_key: str | int | None = None,
        transform: Callable[[Any], torch.Tensor] | None = None,
        prefix: str = "",
        names: dict[str, str] | None = None,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        cmmd_sigma: float = 10.0,
        cmmd_scale: float = 1000.0,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        log_images: int = 16,
        final_num_samples: int | None = None,
        progress: bool = True,
        dry_run_samples: int = 4,
    ) -> None:
        super().__init__()
        self.metrics = registry.check_metric_names(metrics)
        if real is None:
            raise ValueError("real= is required: reference images (loader, dataset, folder, 'train'/'val') or .npz")
        self.real = real
        self.sample_fn = sample_fn
        self.extractors = {"features": feature_extractor, "cmmd": cmmd_extractor}
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.every_n_epochs = every_n_epochs
        self.input_range = input_range
        self.real_options = RealOptions(
            input_range=real_input_range if real_input_range is not None else input_range,
            batch_size=batch_size, num_real=num_real, image_key=image_key, transform=transform,
        )  # fmt: skip
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.cmmd_sigma = cmmd_sigma
        self.cmmd_scale = cmmd_scale
        self.prefix = prefix
        self.names = dict(names or {})
        self.cache = StatsCache(cache_dir or default_cache_root() / "stats") if use_cache else None
        self.log_images = log_images
        self.final_num_samples = final_num_samples
        self.progress = progress
        self.dry_run_samples = max(2, dry_run_samples)
        self._check_arguments()
        # run state
        self.slots: list[Slot] = []
        self.reference: Reference | None = None
        self.history: list[dict[str, float]] = []
        self.best: float | None = None
        self.final_metrics: dict[str, float] = {}
        self._last_evaluated: tuple[int, int] | None = None

    def _check_arguments(self) -> None:
        """Fail at construction, naming the argument to change."""
        for name in ("num_samples", "batch_size", "every_n_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_samples < 2:
            raise ValueError(f"num_samples={self.num_samples}: metrics need at least 2 generated samples")
        registry.check_config(self.metrics, self.metric_options, self.num_samples)
        if self.final_num_samples is not None and self.final_num_samples < self.num_samples:
            raise ValueError("final_num_samples should be larger than num_samples (it is the end-of-fit evaluation)")
        if not 0 <= self.log_images <= self.batch_size:
            raise ValueError(f"log_images must be between 0 and batch_size={self.batch_size}")
        if is_statistics_file(self.real) and any(spec.features for spec in registry.specs(self.metrics)):
            raise ValueError(f"a .npz statistics file only supports FID; {self.metrics} need real images")
        unknown = set(self.names) - set(registry.metric_keys(self.metrics)) - {"eval_seconds"}
        if unknown:
            raise ValueError(f"names= renames {sorted(unknown)}, which these metrics do not log")

    @property
    def metric_options(self) -> registry.MetricOptions:
        """The metric parameters, with KID's subsets drawn from the noise seed."""
        return registry.MetricOptions(self.kid_subsets, self.kid_subset_size, self.seed, self.cmmd_sigma,
                                      self.cmmd_scale)  # fmt: skip

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix, metrics=self.metrics)

    def key(self, name: str) -> str:
        """The logged key of a value: prefix + its (possibly renamed) name."""
        return self.prefix + self.names.get(name, name)

    def keys(self) -> list[str]:
        """Logged metric keys (what EarlyStopping / ModelCheckpoint may monitor)."""
        return [self.key(name) for name in registry.metric_keys(self.metrics)]

    # ------------------------------------------------------------------ schedule
    def should_evaluate(self, trainer: pl.Trainer) -> bool:
        """Whether this epoch is an evaluation epoch (Lightning's ``(epoch + 1) % n == 0``). Override
        for another schedule; :mod:`lightning_fid.monitors` checks monitors against the default one."""
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def evaluated_now(self, trainer: pl.Trainer) -> bool:
        """True right after an evaluation, until the trainer moves to another epoch or step."""
        return self._last_evaluated == (trainer.current_epoch, trainer.global_step)

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Build extractors (resolving weights: fails fast when missing) and check the sampler."""
        self._sampler(pl_module)
        if not self.slots:
            self.slots = build_slots(self.metrics, self.extractors)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._prepare(trainer, pl_module)
        on_validation = is_overridden("validation_step", pl_module)
        check_monitors(trainer, set(self.keys()), Cadence(self.every_n_epochs, on_validation))

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.reference is None:  # trainer.validate() without fit
            self._prepare(trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if is_overridden("validation_step", pl_module) and self.should_evaluate(trainer):
            self._evaluate_and_log(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs this before EarlyStopping's and ModelCheckpoint's on_train_epoch_end.
        if not is_overridden("validation_step", pl_module) and self.should_evaluate(trainer):
            self._evaluate_and_log(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.final_num_samples is None:
            return
        values, _ = self.evaluate(pl_module, self.final_num_samples)
        self.final_metrics = {self.prefix + "final_" + self.names.get(k, k): v for k, v in values.items()}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(self.final_metrics, step=trainer.global_step)

    # ------------------------------------------------------------------ preparation and evaluation
    def _sampler(self, pl_module: nn.Module) -> SampleFn:
        if self.sample_fn is not None:
            return self.sample_fn
        if not callable(getattr(pl_module, SAMPLE_METHOD, None)):
            raise ValueError(
                f"pass sample_fn=... or define {type(pl_module).__name__}.{SAMPLE_METHOD}(batch_size, generator) "
                "returning images"
            )
        return _sample_with_method

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Dry run of the whole chain, then reference statistics: everything before training starts."""
        device = pl_module.device
        # Lightning may call hooks under inference_mode; cached statistics must stay ordinary tensors.
        with torch.inference_mode(False), torch.no_grad():
            for slot in self.slots:
                slot.module.to(device)
            dry_run(self._sampler(pl_module), pl_module, self.slots, num_samples=min(self.dry_run_samples, self.num_samples),
                    seed=self.seed, input_range=self.input_range, device=device)  # fmt: skip
            named = {which: partial(_trainer_loader, trainer, pl_module, which) for which in ("train", "val")}
            reference = resolve_reference(self.real, self.slots, self.real_options, device=device, cache=self.cache,
                                          named=named, progress=self._show_progress())  # fmt: skip
            registry.prepare_reference(self.metrics, reference.stats, self.metric_options)
        self.reference = reference

    def evaluate(self, pl_module: pl.LightningModule, num_samples: int) -> tuple[dict[str, float], torch.Tensor | None]:
        """Sample ``num_samples`` fixed-noise images on all ranks and compute the metrics.

        A collective call: every rank must call it. Returns (values, image grid on rank 0 or None);
        values are NaN, with a warning, when the generator produced non-finite images.
        """
        with torch.inference_mode(False), torch.no_grad():
            fake = sample_and_extract(
                self._sampler(pl_module), pl_module, self.slots, num_samples=num_samples, batch_size=self.batch_size,
                seed=self.seed, input_range=self.input_range, device=pl_module.device,
                grid_size=self.log_images if rank_and_world()[0] == 0 else 0, progress=self._show_progress(),
            )  # fmt: skip
            if fake.stats is None:
                rank_zero_warn(
                    f"epoch {pl_module.current_epoch}: the generator produced NaN/inf images; logging NaN for "
                    f"{self.metrics}"
                )
                return registry.nan_values(self.metrics), fake.grid
            return registry.compute(self.metrics, self.reference.stats, fake.stats, self.metric_options), fake.grid

    def _evaluate_and_log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = time.perf_counter()
        values, grid = self.evaluate(pl_module, self.num_samples)
        values["eval_seconds"] = time.perf_counter() - start
        for name, value in values.items():
            pl_module.log(self.key(name), float(value), on_step=False, on_epoch=True, sync_dist=False,
                          rank_zero_only=False, batch_size=1)  # fmt: skip
        self._last_evaluated = (trainer.current_epoch, trainer.global_step)
        self._record(trainer, values)
        if grid is not None and trainer.is_global_zero:
            log_grid(trainer, grid, f"{self.prefix}samples", trainer.global_step, trainer.current_epoch)

    def _record(self, trainer: pl.Trainer, values: dict[str, float]) -> None:
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **values})
        main = values.get(self.metrics[0], math.nan)
        if not math.isnan(main) and (self.best is None or main < self.best):
            self.best = main

    def _show_progress(self) -> bool:
        return self.progress and rank_and_world()[0] == 0

    # ------------------------------------------------------------------ checkpointing
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "best": self.best, "seed": self.seed, "num_samples": self.num_samples,
                "real_key": self.reference.key if self.reference is not None else None}  # fmt: skip

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.best = state_dict.get("best")
        self.seed = state_dict.get("seed", self.seed)  # same noise as before the interruption
        saved_n = state_dict.get("num_samples", self.num_samples)
        if saved_n != self.num_samples:
            rank_zero_warn(
                f"resuming with num_samples={self.num_samples} but the checkpoint used {saved_n}: "
                "values before and after are not comparable"
            )
