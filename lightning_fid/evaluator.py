"""Evaluator: one evaluation set-up (metrics, extractors, real data, fixed noise), free of Lightning hooks.

The callback owns one and calls it on schedule; scripts and notebooks can use it directly. It
builds the extractor slots from the metric table, prepares once (a dry run at a full batch, then
the reference statistics with each metric's reference-side work), and evaluates any generator
module on the fixed noise. Every call leaves the RNG states as it found them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_fid import registry
from lightning_fid.cache import StatsCache
from lightning_fid.distributed import agreed, rank_and_world
from lightning_fid.hygiene import preserved_rng
from lightning_fid.images import InputRange, parse_range
from lightning_fid.pipeline import dry_run, sample_and_extract
from lightning_fid.real import RealOptions
from lightning_fid.reference import Reference, is_statistics_file, resolve_reference
from lightning_fid.sampling import SampleFn, make_sampler
from lightning_fid.slots import Slot, build_slots


def module_device(module: nn.Module) -> torch.device:
    """Where the generator lives (a LightningModule knows; a plain module has parameters)."""
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    return next((p.device for p in module.parameters()), torch.device("cpu"))


@dataclass
class Evaluator:
    """What one evaluation needs; see :class:`~lightning_fid.GenerativeMetrics` for each field."""

    real: Any
    metrics: tuple[str, ...]
    sample_fn: SampleFn | None = None
    extractors: dict[str, nn.Module | None] = field(default_factory=dict)
    num_samples: int = 10_000
    batch_size: int = 250
    seed: int = 0
    input_range: InputRange = (-1.0, 1.0)
    real_options: RealOptions = field(default_factory=RealOptions)
    options: registry.MetricOptions = field(default_factory=registry.MetricOptions)  # its seed: ``seed``
    conditions: Sequence[Any] | None = None
    sample_autocast: torch.dtype | None = None
    cache: StatsCache | None = None
    grid_size: int = 16
    progress: bool = True
    dry_run_samples: int | None = None
    range_check: bool = True
    slots: list[Slot] = field(default_factory=list)
    reference: Reference | None = None

    def __post_init__(self) -> None:
        self.metrics = registry.check_metric_names(self.metrics)
        if self.real is None:
            raise ValueError("real= is required: reference images (loader, dataset, folder, 'train'/'val') or .npz")
        for name in ("num_samples", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_samples < 2:
            raise ValueError(f"num_samples={self.num_samples}: metrics need at least 2 generated samples")
        parse_range(self.input_range)
        registry.check_config(self.metrics, self.metric_options, self.num_samples)
        if not 0 <= self.grid_size <= self.batch_size:
            raise ValueError(f"log_images must be between 0 and batch_size={self.batch_size}")
        if is_statistics_file(self.real) and any(spec.features for spec in registry.specs(self.metrics)):
            raise ValueError(f"a .npz statistics file only supports FID; {self.metrics} need real images")
        self.dry_run_samples = max(2, min(self.num_samples, self.dry_run_samples or self.batch_size))
        self.classes = self._count_classes()

    def _count_classes(self) -> int:
        """Number of classes of per-class metrics: from the generated samples' integer labels."""
        if not registry.per_class_slots(self.metrics):
            return 0
        if self.conditions is None or self.real_options.label_key is None:
            raise ValueError("per-class metrics need conditions= (the generated samples' integer class labels) and "
                             "label_key= (where real batches hold theirs)")  # fmt: skip
        labels = torch.as_tensor(self.conditions if not isinstance(self.conditions, torch.Tensor) else self.conditions)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.ndim != 1 or int(labels.min()) < 0:
            raise ValueError(
                "per-class metrics need conditions= to be non-negative integer class labels, one per sample"
            )
        return int(labels.max()) + 1

    @property
    def metric_options(self) -> registry.MetricOptions:
        """The metric parameters, with KID's subsets drawn from the noise seed."""
        return replace(self.options, seed=self.seed)

    def check_conditions(self, needed: int) -> None:
        """Refuse a ``conditions`` sequence shorter than the samples drawn."""
        if self.conditions is not None and len(self.conditions) < needed:
            raise ValueError(f"conditions has {len(self.conditions)} entries but {needed} samples are generated")

    def build(self, shared: Sequence[Slot] = ()) -> None:
        """Build the extractor slots once (resolving published weights: fails fast when missing)."""
        if not self.slots:
            self.slots = build_slots(self.metrics, self.extractors, shared=shared, classes=self.classes)

    def prepare(
        self,
        module: nn.Module,
        named: Mapping[str, Callable[[], Any]] | None = None,
        known: Mapping[str, Reference] | None = None,
    ) -> None:
        """Dry run of the whole chain at a full batch, then reference statistics (a collective call).
        Leaves every RNG as it found it, so a cache hit trains exactly like a cache miss."""
        self.build()
        device = module_device(module)
        # Lightning may call hooks under inference_mode; cached statistics must stay ordinary tensors.
        with torch.inference_mode(False), torch.no_grad(), preserved_rng():
            for slot in self.slots:
                slot.module.to(device)
            with agreed("the dry run", device):  # no rank may go on to the reference pass alone
                dry_run(make_sampler(self.sample_fn, module), module, self.slots, num_samples=self.dry_run_samples,
                        seed=self.seed, input_range=self.input_range, device=device, conditions=self.conditions,
                        sample_autocast=self.sample_autocast, range_check=self.range_check)  # fmt: skip
            reference = resolve_reference(self.real, self.slots, self.real_options, device=device, cache=self.cache,
                                          named=named, known=known, progress=self._progress())  # fmt: skip
            registry.prepare_reference(self.metrics, reference.stats, self.metric_options)
        self.reference = reference

    def evaluate(
        self, module: nn.Module, num_samples: int | None = None
    ) -> tuple[dict[str, float], torch.Tensor | None]:
        """Metrics of ``num_samples`` (default: ``self.num_samples``) fixed-noise samples of ``module``'s
        current weights (a collective call). Returns (values, grid on rank 0 or None); values are NaN,
        with a warning, when the generator produced non-finite images."""
        if self.reference is None:
            self.prepare(module)
        with torch.inference_mode(False), torch.no_grad(), preserved_rng():
            fake = sample_and_extract(
                make_sampler(self.sample_fn, module), module, self.slots, num_samples=num_samples or self.num_samples,
                batch_size=self.batch_size, seed=self.seed, input_range=self.input_range, device=module_device(module),
                conditions=self.conditions, sample_autocast=self.sample_autocast,
                grid_size=self.grid_size if rank_and_world()[0] == 0 else 0, progress=self._progress(),
            )  # fmt: skip
            if fake.stats is None:
                epoch = getattr(module, "current_epoch", 0)
                rank_zero_warn(f"epoch {epoch}: the generator produced NaN/inf images; logging NaN for {self.metrics}")
                return registry.nan_values(self.metrics), fake.grid
            return registry.compute(self.metrics, self.reference.stats, fake.stats, self.metric_options), fake.grid

    def _progress(self) -> bool:
        return self.progress and rank_and_world()[0] == 0
