"""Evaluator: one evaluation set-up (metrics, networks, real data, fixed noise), free of Lightning.

The callback owns one and calls it on schedule; scripts and notebooks can use it directly. It
builds the extractor slots the metrics need, prepares once (a dry run at a full batch, then the
reference statistics and each metric's reference-side work), and evaluates any generator module on
the fixed noise. Every call leaves the RNG states as it found them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_fid.engine._cache import StatsCache
from lightning_fid.engine._card import evaluator_card
from lightning_fid.engine._distributed import agreed, rank_and_world
from lightning_fid.engine._dry_run import dry_run
from lightning_fid.engine._file_slots import check_file_for_metrics
from lightning_fid.engine._hygiene import preserved_rng
from lightning_fid.engine._images import InputRange, parse_range
from lightning_fid.engine._labels import (
    LabelPolicy,
    check_class_counts,
    count_classes,
    label_policy,
)
from lightning_fid.engine._memory import check_group_memory
from lightning_fid.engine._pipeline import sample_and_extract
from lightning_fid.engine._real import as_real_data
from lightning_fid.engine._reference import Reference, is_statistics_file, resolve_reference
from lightning_fid.engine._sampling import SampleFn, make_sampler
from lightning_fid.engine._scoring import Scorer, warn_rank_zero
from lightning_fid.engine._slots import Slot, build_slots
from lightning_fid.metrics._jackknife import check_groups
from lightning_fid.metrics.base import Metric, RunInfo, check_int
from lightning_fid.protocols import DEFAULT_PROTOCOL, deviations, get_protocol


def module_device(module: nn.Module) -> torch.device:
    """Where the generator lives (a LightningModule knows; a plain module has parameters)."""
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    return next((p.device for p in module.parameters()), torch.device("cpu"))


class Evaluator:
    """What one evaluation needs; see :class:`~lightning_fid.GenerativeMetrics` for each argument.

    Raises:
        ValueError: any option that cannot work, before any network is loaded.
    """

    def __init__(
        self,
        real: Any,
        metrics: str | Metric | Iterable[str | Metric] | None = None,
        *,
        protocol: str = DEFAULT_PROTOCOL,
        sample_fn: SampleFn | None = None,
        feature_extractor: nn.Module | None = None,
        weights: Mapping[str, Any] | None = None,
        num_samples: int = 10_000,
        batch_size: int = 250,
        seed: int = 0,
        input_range: InputRange = (-1.0, 1.0),
        conditions: Sequence[Any] | str | LabelPolicy | None = None,
        num_classes: int | None = None,
        sample_autocast: torch.dtype | None = None,
        cache: StatsCache | None = None,
        grid_size: int = 0,
        progress: bool = True,
        dry_run_samples: int | None = None,
        range_check: bool = True,
        final_num_samples: int | None = None,
        error_bars: bool | int = True,
    ) -> None:
        self.protocol = get_protocol(protocol)
        self.metrics = self.protocol.default_metrics() if metrics is None else self.protocol.resolve(metrics)
        self.deviations = deviations(self.protocol, self.metrics, feature_extractor)
        self.real = as_real_data(real)
        if isinstance(num_samples, int) and num_samples < 2:
            raise ValueError(f"num_samples={num_samples}: metrics need at least 2 generated samples")
        self.num_samples = check_int(num_samples, "num_samples", 2)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        parse_range(input_range)
        if final_num_samples is not None and check_int(final_num_samples, "final_num_samples", 2) < num_samples:
            raise ValueError("final_num_samples should be larger than num_samples (it is the end-of-fit evaluation)")
        if not isinstance(grid_size, int) or not 0 <= grid_size <= batch_size:
            raise ValueError(f"log_images must be between 0 and batch_size={batch_size}, got {grid_size!r}")
        needed = max(num_samples, final_num_samples or 0)
        self.policy = label_policy(conditions, num_classes)
        if self.policy is not None:
            self.policy.check([num_samples, *([final_num_samples] if final_num_samples else [])])
            conditions = self.policy.labels(needed, seed)
        if conditions is not None and len(conditions) < needed:
            raise ValueError(f"conditions has {len(conditions)} entries but {needed} samples are generated")
        if is_statistics_file(self.real.source):  # a reference file: each metric's statistics, or images, in it
            own = feature_extractor is not None or self.protocol.inception != "tf"
            check_file_for_metrics(self.real.source, self.metrics, feature_extractor=own)
        per_class = any(m.needs.per_class for m in self.metrics)
        classes = count_classes(conditions, self.real.label_key, self.policy) if per_class else 0
        if per_class:
            check_class_counts(conditions, classes, num_samples)
        self.run = RunInfo(num_samples=needed, classes=classes, min_samples=num_samples)
        self.scorer = Scorer(self.metrics, (), self.run, seed, groups=check_groups(error_bars, num_samples))
        self.sample_fn = sample_fn
        self.feature_extractor = feature_extractor
        self.weights = dict(weights or {})
        self.input_range = input_range
        self.real_options = self.real.options(batch_size, input_range)
        self.conditions = conditions
        self.sample_autocast = sample_autocast
        self.cache = cache
        self.grid_size = grid_size
        self.progress = progress
        self.range_check = range_check
        self.dry_run_samples = max(2, min(num_samples, dry_run_samples or batch_size))
        self.slots: list[Slot] = []
        self.reference: Reference | None = None
        self._checked = False

    @property
    def seed(self) -> int:
        """Seed of the fixed noise (and the default seed of metrics' own random draws)."""
        return self.scorer.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self.scorer.seed = value
        if self.policy is not None:  # uniform labels follow the seed, as the noise does
            self.conditions = self.policy.labels(self.run.num_samples, value)

    def keys(self) -> list[str]:
        """Every key the metrics log, in order (per-class keys included)."""
        return self.scorer.keys()

    def reset(self) -> None:
        """A new run: the networks are described again (their weights may have changed since), and the
        next :meth:`prepare` runs the dry run and resolves the reference again."""
        self._checked = False
        self.reference = None
        self.slots = []

    def build(self) -> None:
        """Build the extractor slots once (resolving published weights: fails fast when missing)."""
        if not self.slots:
            if self.feature_extractor is None and self.protocol.inception != "tf":  # pytorch-fid's reading
                from lightning_fid.extractors import InceptionV3

                self.feature_extractor = InceptionV3(self.weights.get("inception"), preprocess=self.protocol.inception)
            options = {"dinov2": {"resize": self.protocol.dinov2_resize}} if self.protocol.dinov2_resize else None
            self.slots, slot_of = build_slots(
                self.metrics, self.feature_extractor, self.weights, self.run.classes, options=options
            )
            self.scorer.slot_of = tuple(slot_of)

    def check(self, module: nn.Module) -> None:
        """Build the networks and run the dry run of the whole chain (a collective call): every batch
        shape an evaluation uses, through every network. Cheap; done once.

        Raises:
            ValueError: anything wrong with the generator or the networks, saying what to change.
        """
        self.build()
        device = module_device(module)
        with torch.inference_mode(False), torch.no_grad(), preserved_rng():
            for slot in self.slots:
                slot.module.to(device)
            with agreed("the dry run", device):  # no rank may go on to the reference pass alone
                dry_run(
                    make_sampler(self.sample_fn, module),
                    module,
                    self.slots,
                    batch_sizes=self._dry_run_sizes(),
                    seed=self.seed,
                    input_range=self.input_range,
                    device=device,
                    conditions=self.conditions,
                    sample_autocast=self.sample_autocast,
                    range_check=self.range_check,
                )
        self._checked = True

    def prepare(self, module: nn.Module, named: Mapping[str, Callable[[], Any]] | None = None) -> None:
        """The dry run (unless :meth:`check` ran), then the reference statistics and each metric's
        reference-side work (a collective call). Leaves every RNG as it found it, so a cache hit
        trains exactly like a cache miss.

        Raises:
            ValueError: anything wrong with the generator, the networks, the real data or a metric's
                fit to them, saying what to change.
        """
        if not getattr(self, "_checked", False):
            self.check(module)
        device = module_device(module)
        # Lightning may call hooks under inference_mode; cached statistics must stay ordinary tensors.
        with torch.inference_mode(False), torch.no_grad(), preserved_rng():
            for slot in self.slots:
                slot.module.to(device)
            check_group_memory(self.slots, self.scorer.grouped_slots(), self.run.num_samples, device)
            reference = resolve_reference(
                self.real.source,
                self.slots,
                self.real_options,
                device=device,
                cache=self.cache,
                named=named,
                progress=self._progress(),
                identity=[m.identity() for m in self.metrics],
                generated=self.run.num_samples,
            )
            self.scorer.prepare(reference.stats)
            self.scorer.try_user_metrics(reference.stats)
        self.reference = reference

    def evaluate(
        self, module: nn.Module, num_samples: int | None = None, strict: bool = True, seed: int | None = None
    ) -> tuple[dict[str, float], torch.Tensor | None]:
        """Metrics of ``num_samples`` (default: ``self.num_samples``) fixed-noise samples of ``module``'s
        current weights (a collective call). Returns (values, grid on rank 0 or None). ``seed`` draws
        another fixed noise (and, under ``conditions="uniform"``, other labels) than the run's.

        Non-finite generated images give NaN for every key, with a warning. With ``strict=False`` (the
        callback, once training has started) any failure of sampling, extraction or a metric gives
        NaN for the keys it affects, with a warning naming the cause, instead of an exception.
        """
        n = num_samples or self.num_samples
        if self.conditions is not None and n > len(self.conditions):
            raise ValueError(
                f"evaluate(num_samples={n}) but conditions has {len(self.conditions)} entries: one per sample"
            )
        if self.reference is None:
            self.prepare(module)
        with torch.inference_mode(False), torch.no_grad(), preserved_rng():
            try:
                fake = sample_and_extract(
                    make_sampler(self.sample_fn, module),
                    module,
                    self.slots,
                    num_samples=n,
                    batch_size=self.batch_size,
                    seed=self.seed if seed is None else seed,
                    input_range=self.input_range,
                    device=module_device(module),
                    conditions=self._conditions(seed),
                    sample_autocast=self.sample_autocast,
                    grid_size=self.grid_size if rank_and_world()[0] == 0 else 0,
                    progress=self._progress(),
                    groups=self.scorer.grouped_slots(),
                )
            except Exception as exc:
                if strict:
                    raise
                message = (
                    f"lightning_fid: sampling or feature extraction failed ({type(exc).__name__}: {exc}); "
                    f"logging NaN for {self.keys()}"
                )
                if "on another rank" in str(exc):
                    warn_rank_zero(message)
                else:  # the rank where it happened says why, whichever it is
                    warnings.warn(message, stacklevel=2)
                return self.scorer.nan_values(), None
            if fake.stats is None:
                when = f"epoch {getattr(module, 'current_epoch', 0)}, step {getattr(module, 'global_step', 0)}"
                warn_rank_zero(f"{when}: the generator produced NaN/inf images; logging NaN for {self.keys()}")
                return self.scorer.nan_values(), fake.grid
            return self.scorer.score(self.reference.stats, fake.stats, strict, self._progress()), fake.grid

    def card(self, final_num_samples: int | None = None, final_seeds: int = 1) -> dict[str, Any]:
        """The protocol card of this set-up (builds the networks; the reference once :meth:`prepare` ran)."""
        self.build()
        return evaluator_card(self, final_num_samples, final_seeds)

    def _conditions(self, seed: int | None) -> Any:
        """The generated samples' conditions under evaluation seed ``seed`` (None: the run's)."""
        if seed is None or seed == self.seed or self.policy is None:
            return self.conditions
        return self.policy.labels(self.run.num_samples, seed)

    def _dry_run_sizes(self) -> list[int]:
        """The dry run's batch sizes: one full batch, then every evaluation's last partial batch."""
        partial = [n % self.batch_size for n in (self.num_samples, self.run.num_samples) if n > self.batch_size]
        return [self.dry_run_samples, *(p for p in partial if p)]

    def _progress(self) -> bool:
        return self.progress and rank_and_world()[0] == 0
