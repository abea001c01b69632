"""GenerativeMetrics: FID / KID / CMMD of a generative model, measured while it trains.

The Lightning glue only: scheduling, logging, state and fail-fast checks. Sampling, feature
extraction, statistics and metric math live in sampling.py, extractors/, evaluation.py, metrics/.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from tqdm.auto import tqdm

from lightning_fid.cache import StatsCache, cache_key
from lightning_fid.distributed import rank_and_world
from lightning_fid.evaluation import (
    KNOWN_METRICS,
    Accumulator,
    SetStats,
    Slot,
    any_rank,
    collect,
    compute_metrics,
    make_slot,
    nan_metrics,
    prepare_reference,
)
from lightning_fid.extractors.weights import cache_dir as default_cache_root
from lightning_fid.image_logging import image_grid, log_grid
from lightning_fid.images import InputRange, parse_range, to_uint8
from lightning_fid.real import RealSource, count_available
from lightning_fid.sampling import SampleFn, generate, plan
from lightning_fid.stats import load_statistics

SAMPLE_METHOD = "sample_images"  # LightningModule.sample_images(batch_size, generator) -> images


class GenerativeMetrics(Callback):
    """Log FID / KID / CMMD of a generator at validation time, exactly and identically on every rank.

    Args:
        real: reference data: a DataLoader, a Dataset, a callable returning either, ``"train"`` /
            ``"val"`` (the trainer's loaders), an image folder, or a .npz statistics file (FID only).
        sample_fn: ``sample_fn(module, batch_size, generator) -> images`` (NCHW in ``input_range``);
            ``generator`` is a seeded CPU ``torch.Generator``. Optional if the LightningModule
            defines ``sample_images(batch_size, generator)``.
        metrics: any of ``("fid", "kid", "cmmd")``.
        feature_extractor: module for FID/KID features (default: :class:`InceptionV3`).
        cmmd_extractor: module for CMMD embeddings (default: :class:`CLIP`).
        num_samples: generated samples per evaluation (fixed noise, so epochs are comparable).
        batch_size: sampling batch size (also the real-data batch size).
        seed: seed of the fixed noise.
        every_n_epochs: evaluate at validation epochs where ``epoch % every_n_epochs == 0``.
        input_range: range of generated images: ``(-1, 1)``, ``(0, 1)`` or ``"uint8"``.
        real_input_range: range of real images (default: ``input_range``; uint8 tensors always work).
        num_real: number of real samples (default: all), each used once across ranks.
        image_key / transform: how to pick images out of real batches (dicts, tuples).
        prefix: prepended to every logged key.
        names: rename logged keys, e.g. ``{"cmmd": "mmd"}`` when the CMMD machinery runs on a domain
            encoder instead of CLIP (then it is an RBF-kernel MMD, not CMMD).
        kid_subsets / kid_subset_size: KID subsets (torch-fidelity's 100 x 1000 by default).
        cmmd_sigma / cmmd_scale: CMMD's kernel bandwidth and scale (reference: 10, 1000).
        cache_dir: where real statistics are cached (default: ``$LIGHTNING_FID_HOME/stats``); None
            with ``use_cache=False`` disables the disk cache.
        log_images: number of fixed-noise samples shown as a grid each evaluation (0: none).
        final_num_samples: if set, one more evaluation with this many samples at the end of fit,
            logged as ``final_<metric>``.
        progress: show progress bars on rank 0.
    """

    def __init__(
        self,
        real: Any,
        sample_fn: SampleFn | None = None,
        metrics: tuple[str, ...] | list[str] = ("fid",),
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
        transform: Callable | None = None,
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
        self.metrics = tuple(metrics)
        self._check_config(real, num_samples, batch_size, every_n_epochs, kid_subsets, kid_subset_size,
                           final_num_samples, num_real, log_images)  # fmt: skip
        parse_range(input_range)
        if real_input_range is not None:
            parse_range(real_input_range)
        self.real, self.sample_fn = real, sample_fn
        self.feature_extractor, self.cmmd_extractor = feature_extractor, cmmd_extractor
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.every_n_epochs, self.input_range = every_n_epochs, input_range
        self.real_input_range = real_input_range if real_input_range is not None else input_range
        self.num_real, self.image_key, self.transform, self.prefix = num_real, image_key, transform, prefix
        self.names = dict(names or {})
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.cmmd_sigma, self.cmmd_scale = cmmd_sigma, cmmd_scale
        self.cache = StatsCache(cache_dir or default_cache_root() / "stats") if use_cache else None
        self.log_images, self.final_num_samples = log_images, final_num_samples
        self.progress, self.dry_run_samples = progress, max(2, dry_run_samples)
        # run state
        self.slots: list[Slot] = []
        self.reference: dict[str, SetStats] | None = None
        self.real_key: str | None = None
        self.history: list[dict[str, float]] = []
        self.best: float | None = None
        self.final_metrics: dict[str, float] = {}
        self._fresh: tuple[int, int] | None = None
        self._prepared = False
        self._on_train_epoch_end = False

    # ------------------------------------------------------------------ configuration
    def _check_config(self, real, num_samples, batch_size, every_n_epochs, kid_subsets, kid_subset_size,
                      final_num_samples, num_real, log_images) -> None:  # fmt: skip
        unknown = [m for m in self.metrics if m not in KNOWN_METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"unknown metric(s) {unknown or self.metrics}; choose from {KNOWN_METRICS}")
        if real is None:
            raise ValueError("real= is required: reference images (loader, dataset, folder, 'train'/'val') or .npz")
        if num_samples < 2:
            raise ValueError(f"num_samples={num_samples}: metrics need at least 2 generated samples")
        if batch_size < 1 or every_n_epochs < 1 or kid_subsets < 1:
            raise ValueError("batch_size, every_n_epochs and kid_subsets must be >= 1")
        if "kid" in self.metrics and kid_subset_size > num_samples:
            raise ValueError(
                f"kid_subset_size={kid_subset_size} is larger than num_samples={num_samples}: "
                f"raise num_samples or set kid_subset_size <= {num_samples}"
            )
        if final_num_samples is not None and final_num_samples < num_samples:
            raise ValueError("final_num_samples should be larger than num_samples (it is the end-of-fit evaluation)")
        if num_real is not None and num_real < 2:
            raise ValueError(f"num_real={num_real}: reference statistics need at least 2 real samples")
        if log_images < 0 or log_images > batch_size:
            raise ValueError(f"log_images must be between 0 and batch_size={batch_size}")
        if _is_npz(real) and set(self.metrics) - {"fid"}:
            raise ValueError(f"a .npz statistics file only supports FID; {self.metrics} need real images")

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix, metrics=self.metrics)

    def key(self, name: str) -> str:
        """The logged key of a value: prefix + its (possibly renamed) name."""
        return self.prefix + self.names.get(name, name)

    def keys(self) -> list[str]:
        """Logged metric keys."""
        names = list(self.metrics) + (["kid_std"] if "kid" in self.metrics else [])
        return [self.key(n) for n in names]

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Build extractors (resolving weights: fails fast when missing) and check sample_fn."""
        if self.sample_fn is None:
            if not callable(getattr(pl_module, SAMPLE_METHOD, None)):
                raise ValueError(
                    f"pass sample_fn=... or define {type(pl_module).__name__}.{SAMPLE_METHOD}(batch_size, generator) "
                    "returning images"
                )
            self.sample_fn = lambda module, n, g: getattr(module, SAMPLE_METHOD)(n, g)
        if not self.slots:
            self.slots = self._build_slots()
        self._order_before_monitors(trainer)
        self._on_train_epoch_end = not is_overridden("validation_step", pl_module)

    def _build_slots(self) -> list[Slot]:
        slots = []
        if {"fid", "kid"} & set(self.metrics):
            module = self.feature_extractor
            if module is None:
                from lightning_fid.extractors.inception import InceptionV3

                module = InceptionV3()
            slots.append(
                make_slot("features", module, moments="fid" in self.metrics, keep_features="kid" in self.metrics)
            )
        if "cmmd" in self.metrics:
            module = self.cmmd_extractor
            if module is None:
                from lightning_fid.extractors.clip import CLIP

                module = CLIP()
            slots.append(make_slot("cmmd", module, moments=False, keep_features=True))
        return slots

    def _order_before_monitors(self, trainer: pl.Trainer) -> None:
        """Run before EarlyStopping / ModelCheckpoint in shared hooks, so they see this epoch's values."""
        cbs = trainer.callbacks
        monitors = [i for i, cb in enumerate(cbs) if isinstance(cb, (EarlyStopping, ModelCheckpoint))]
        if monitors and cbs.index(self) > monitors[0]:
            cbs.remove(self)
            cbs.insert(monitors[0], self)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._prepare(trainer, pl_module)
        self._guard_monitors(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._prepared:  # trainer.validate() without fit
            self._prepare(trainer, pl_module)

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Dry run of the whole chain, then reference statistics: everything before training starts."""
        with torch.inference_mode(False), torch.no_grad():
            for slot in self.slots:
                slot.module.to(pl_module.device)
            self._dry_run(pl_module)
            self.reference = self._reference(trainer, pl_module)
            self._check_reference()
        self._prepared = True

    def _dry_run(self, pl_module: pl.LightningModule) -> None:
        n = min(self.dry_run_samples, self.num_samples)
        try:
            (_, images), *_ = list(generate(self.sample_fn, pl_module, plan(n, n), self.seed))
            u8 = to_uint8(images, self.input_range, strict=True)
        except ValueError as exc:
            raise ValueError(f"GenerativeMetrics dry run: {exc}") from exc
        acc = Accumulator(self.slots, pl_module.device)
        acc.add(u8.to(pl_module.device), torch.arange(n))  # extractors accept the images

    def _check_reference(self) -> None:
        ref = self.reference
        if "kid" in self.metrics and ref["features"].n < self.kid_subset_size:
            raise ValueError(
                f"kid_subset_size={self.kid_subset_size} is larger than the {ref['features'].n} real samples; "
                "lower kid_subset_size or use more real data"
            )
        for slot in self.slots:
            stats = ref[slot.name]
            if 0 <= stats.n < 2:
                raise ValueError(f"only {stats.n} real sample(s): reference statistics need at least 2")
            if stats.dim != slot.info.feature_dim:
                raise ValueError(
                    f"real statistics have {stats.dim} features but {slot.info.name} gives {slot.info.feature_dim}: "
                    "the .npz was computed with another extractor"
                )

    # ------------------------------------------------------------------ reference statistics
    def _reference(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, SetStats]:
        device = pl_module.device
        if _is_npz(self.real):
            stats = load_statistics(self.real)
            self.real_key = f"npz:{Path(self.real).resolve()}"
            mu, sigma = torch.from_numpy(stats.mu).to(device), torch.from_numpy(stats.sigma).to(device)
            ref = {"features": SetStats(mu=mu, sigma=sigma, n=stats.n if stats.n is not None else -1)}  # -1: unknown
            prepare_reference(ref, "features")
            return ref
        source = RealSource(self._resolve_real(trainer, pl_module))
        num = count_available(source, self.num_real, self.image_key, self.transform)
        self.real_key = cache_key(
            slots=[
                (s.name, s.info.name, s.info.fingerprint, str(s.info.input_range), s.moments, s.keep_features)
                for s in self.slots
            ],  # fmt: skip
            real_input_range=str(self.real_input_range),
            transform=repr(self.transform),
            image_key=self.image_key,
            num_real=num,
            data=source.fingerprint(num, self.image_key, self.transform),
        )
        ref = self._load_cached(device)
        # Agree across ranks: a cache file present on one node's disk but not another's must not send
        # one rank into the collective real pass alone.
        if any_rank(ref is None, device):
            ref = self._compute_reference(source, num, device)
            self._save_cached(ref)
        prepare_reference(ref, "features" if "fid" in self.metrics else None)
        return ref

    def _resolve_real(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        real = self.real
        if isinstance(real, str) and real in ("train", "val"):
            method = f"{real}_dataloader"
            if trainer.datamodule is not None and is_overridden(method, trainer.datamodule):
                loader = getattr(trainer.datamodule, method)()
            elif is_overridden(method, pl_module):
                loader = getattr(pl_module, method)()
            else:
                raise ValueError(f"real={real!r} but neither a datamodule nor the LightningModule defines {method}()")
            return loader[0] if isinstance(loader, (list, tuple)) else loader
        if callable(real) and not isinstance(real, (torch.utils.data.Dataset, torch.utils.data.DataLoader)):
            return real()
        return real

    def _compute_reference(self, source: RealSource, num: int, device: torch.device) -> dict[str, SetStats]:
        return collect(source, num, self.slots, self.batch_size, device, self.real_input_range, self.image_key,
                       self.transform, progress=self._show_progress())  # fmt: skip

    def _load_cached(self, device: torch.device) -> dict[str, SetStats] | None:
        if self.cache is None:
            return None
        ref = {}
        for slot in self.slots:
            arrays = self.cache.load(f"{self.real_key}-{slot.name}")
            if arrays is None:
                return None
            ref[slot.name] = SetStats.from_arrays(arrays, device)
        return ref

    def _save_cached(self, ref: dict[str, SetStats]) -> None:
        if self.cache is None:
            return
        rank, world = rank_and_world()
        if rank == 0:
            for slot in self.slots:
                meta = {"extractor": slot.info.name, "n": ref[slot.name].n, "key": self.real_key}
                self.cache.save(f"{self.real_key}-{slot.name}", ref[slot.name].to_arrays(), meta)
        if world > 1:
            torch.distributed.barrier()

    # ------------------------------------------------------------------ evaluation
    def _due(self, trainer: pl.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._on_train_epoch_end and self._due(trainer):
            self._evaluate_and_log(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._on_train_epoch_end and self._due(trainer):
            self._evaluate_and_log(trainer, pl_module)

    def _evaluate_and_log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = time.perf_counter()
        values, grid = self.evaluate(pl_module, self.num_samples, trainer.current_epoch)
        values["eval_seconds"] = time.perf_counter() - start
        for name, value in values.items():
            pl_module.log(self.key(name), float(value), on_step=False, on_epoch=True, sync_dist=False,
                          rank_zero_only=False, batch_size=1)  # fmt: skip
        self._fresh = (trainer.current_epoch, trainer.global_step)
        self._record(trainer, values)
        if grid is not None and trainer.is_global_zero:
            log_grid(trainer, grid, f"{self.prefix}samples", trainer.global_step, trainer.current_epoch)

    def evaluate(
        self, pl_module: pl.LightningModule, num_samples: int, epoch: int = -1
    ) -> tuple[dict[str, float], torch.Tensor | None]:
        """Sample ``num_samples`` fixed-noise images on all ranks and compute the metrics.

        A collective call: every rank must call it. Returns (values, image grid on rank 0 or None).
        """
        rank, world = rank_and_world()
        device = pl_module.device
        grid, bad = None, False
        batches = plan(num_samples, self.batch_size, rank, world)
        # Lightning evaluates under inference_mode; our accumulators must stay ordinary tensors.
        with torch.inference_mode(False), torch.no_grad():
            acc = Accumulator(self.slots, device)
            bar = tqdm(
                total=len(batches), desc="lightning_fid: sampling", disable=not self._show_progress(), leave=False
            )
            for batch, images in generate(self.sample_fn, pl_module, batches, self.seed):
                bar.update(1)
                if not bool(torch.isfinite(images).all()):
                    bad = True
                    continue
                u8 = to_uint8(images.detach(), self.input_range, strict=False)
                if batch.index == 0 and self.log_images:
                    grid = image_grid(u8[: self.log_images])
                acc.add(u8.to(device), batch.sample_index)
            bar.close()
            if any_rank(bad, device):
                warnings.warn(
                    f"epoch {epoch}: the generator produced NaN/inf images; logging NaN for {self.metrics}",
                    stacklevel=2,
                )
                for bank in acc.banks.values():
                    bank.reset()
                return nan_metrics(self.metrics), grid
            fake = acc.finish()
            values = compute_metrics(
                self.metrics, self.reference, fake, self.kid_subsets, min(self.kid_subset_size, num_samples),
                self.seed, self.cmmd_sigma, self.cmmd_scale,
            )  # fmt: skip
        return values, grid

    def _record(self, trainer: pl.Trainer, values: dict[str, float]) -> None:
        entry = {"epoch": trainer.current_epoch, "step": trainer.global_step, **values}
        self.history.append(entry)
        main = values.get(self.metrics[0], math.nan)
        if not math.isnan(main) and (self.best is None or main < self.best):
            self.best = main

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.final_num_samples is None:
            return
        values, _ = self.evaluate(pl_module, self.final_num_samples, trainer.current_epoch)
        self.final_metrics = {self.prefix + "final_" + self.names.get(k, k): v for k, v in values.items()}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(self.final_metrics, step=trainer.global_step)

    def _show_progress(self) -> bool:
        return self.progress and rank_and_world()[0] == 0

    # ------------------------------------------------------------------ monitors
    def _guard_monitors(self, trainer: pl.Trainer) -> None:
        """EarlyStopping / ModelCheckpoint on our keys only act on epochs with a fresh evaluation,
        so patience counts evaluations and a stale value is never ranked."""
        ours = set(self.keys())
        for cb in trainer.callbacks:
            if isinstance(cb, EarlyStopping) and cb.monitor in ours and not getattr(cb, "_lightning_fid_guard", False):
                original = cb._should_skip_check
                cb._should_skip_check = lambda tr, original=original: original(tr) or not self._is_fresh(tr)
                cb._lightning_fid_guard = True
            if (
                isinstance(cb, ModelCheckpoint)
                and cb.monitor in ours
                and not getattr(cb, "_lightning_fid_guard", False)
            ):
                original_save = cb._save_topk_checkpoint

                def guarded(tr, candidates, original_save=original_save):
                    if self._is_fresh(tr):
                        original_save(tr, candidates)

                cb._save_topk_checkpoint = guarded
                cb._lightning_fid_guard = True

    def _is_fresh(self, trainer: pl.Trainer) -> bool:
        return self._fresh == (trainer.current_epoch, trainer.global_step)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "best": self.best, "seed": self.seed, "real_key": self.real_key,
                "num_samples": self.num_samples}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.best = state_dict.get("best")
        self.seed = state_dict.get("seed", self.seed)  # same noise as before the interruption
        saved_n = state_dict.get("num_samples", self.num_samples)
        if saved_n != self.num_samples:
            warnings.warn(
                f"resuming with num_samples={self.num_samples} but the checkpoint used {saved_n}: "
                "values before and after are not comparable",
                stacklevel=2,
            )


def _is_npz(real: Any) -> bool:
    return isinstance(real, (str, Path)) and str(real).endswith(".npz")
