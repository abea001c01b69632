"""The metric table: one entry per metric, read by the callback, the pipeline and the CLI.

Each :class:`MetricSpec` says which keys a metric logs, which extractor slot feeds it, whether it
needs float64 moments (Fréchet distances) or the kept features (kernel and sample-based metrics),
which :class:`MetricOptions` fields it reads, its checks, the reference-side work it caches once per
run, and its pure compute function. Each :class:`SlotSpec` names an extractor slot, the argument
that overrides it and the standard network built when none is given. Adding a metric means adding
one pure function in :mod:`lightning_fid.metrics` and one entry here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from lightning_fid.distributed import Group
from lightning_fid.metrics.cmmd import cmmd
from lightning_fid.metrics.fid import frechet_distance, reference_factor, warn_if_rank_deficient
from lightning_fid.metrics.kid import kid, kid_real_terms
from lightning_fid.stats import Statistics


@dataclass(frozen=True)
class MetricOptions:
    """Parameters of the metric computations (checked when constructed).

    Args:
        kid_subsets: KID subsets (torch-fidelity's 100 by default).
        kid_subset_size: samples per KID subset (1000), capped at the generated sample count.
        seed: seed of KID's subset draw (the callback uses its noise seed).
        cmmd_sigma: CMMD's Gaussian kernel bandwidth (reference: 10).
        cmmd_scale: CMMD's output scale (reference: 1000).
    """

    kid_subsets: int = 100
    kid_subset_size: int = 1000
    seed: int = 0
    cmmd_sigma: float = 10.0
    cmmd_scale: float = 1000.0

    def __post_init__(self) -> None:
        if not isinstance(self.kid_subsets, int) or self.kid_subsets < 1:
            raise ValueError(f"kid_subsets must be a positive integer, got {self.kid_subsets!r}")
        if not isinstance(self.kid_subset_size, int) or self.kid_subset_size < 2:
            raise ValueError(f"kid_subset_size must be an integer >= 2, got {self.kid_subset_size!r}")
        if not (isinstance(self.cmmd_sigma, (int, float)) and math.isfinite(self.cmmd_sigma) and self.cmmd_sigma > 0):
            raise ValueError(f"cmmd_sigma must be a positive finite number, got {self.cmmd_sigma!r}")
        if not (isinstance(self.cmmd_scale, (int, float)) and math.isfinite(self.cmmd_scale) and self.cmmd_scale > 0):
            raise ValueError(f"cmmd_scale must be a positive finite number, got {self.cmmd_scale!r}")


def _inception(weights_path: Any = None) -> nn.Module:
    from lightning_fid.extractors.inception import InceptionV3

    return InceptionV3(weights_path)


def _clip(weights_path: Any = None) -> nn.Module:
    from lightning_fid.extractors.clip import CLIP

    return CLIP(weights_path)


@dataclass(frozen=True)
class SlotSpec:
    """An extractor slot: features shared by every metric that names it (one forward pass)."""

    name: str
    argument: str  # GenerativeMetrics argument that overrides the network
    weights: str  # published weights short name: `lightning-fid download <weights>`, CLI --<weights>-weights
    default: Callable[[Any], nn.Module]  # builds the standard network from an optional weights path


SLOTS: dict[str, SlotSpec] = {
    "features": SlotSpec("features", "feature_extractor", "inception", _inception),
    "cmmd": SlotSpec("cmmd", "cmmd_extractor", "clip", _clip),
}

Compute = Callable[[Statistics, Statistics, MetricOptions, Any], dict[str, float]]


@dataclass(frozen=True)
class MetricSpec:
    """One metric: logged keys, slot, what it needs, its options, checks and pure compute function."""

    name: str
    keys: tuple[str, ...]  # logged keys (before prefix / renaming); keys[0] is the metric's value
    slot: str
    moments: bool  # needs float64 mean / covariance of the slot's features
    features: bool  # needs the slot's features themselves (global sample order)
    compute: Compute  # (real, fake, options, process group) -> {key: value}, identical on every rank
    options: tuple[str, ...] = ()  # MetricOptions fields it reads
    check_config: Callable[[MetricOptions, int], None] | None = None  # (options, num_samples): at construction
    check_reference: Callable[[Statistics, MetricOptions], None] | None = None  # before training
    prepare: Callable[[Statistics, MetricOptions], None] | None = None  # reference-side work, once per run
    lower_is_better: bool = True


def _fid(real: Statistics, fake: Statistics, options: MetricOptions, group: Group = None) -> dict[str, float]:
    warn_if_rank_deficient(fake.n or 0, fake.dim, "generated samples")
    factor = real.prepared.get("fid_factor")
    return {"fid": frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma, sigma1_sqrt=factor)}


def _prepare_fid(real: Statistics, options: MetricOptions) -> None:
    real.prepared["fid_factor"] = reference_factor(real.sigma)


def _kid(real: Statistics, fake: Statistics, options: MetricOptions, group: Group = None) -> dict[str, float]:
    n_fake = fake.features.shape[0]
    size = min(options.kid_subset_size, n_fake)
    # The real-vs-real sums of the fixed subsets do not change during a run: computed once, reused.
    key = ("kid_real_terms", n_fake, options.kid_subsets, size, options.seed)
    if key not in real.prepared:
        real.prepared[key] = kid_real_terms(real.features, n_fake, options.kid_subsets, size, options.seed,
                                            distributed=True, group=group)  # fmt: skip
    mean, std = kid(real.features, fake.features, options.kid_subsets, size, options.seed,
                    distributed=True, group=group, real_terms=real.prepared[key])  # fmt: skip
    return {"kid": mean, "kid_std": std}


def _check_kid_config(options: MetricOptions, num_samples: int) -> None:
    if options.kid_subset_size > num_samples:
        raise ValueError(
            f"kid_subset_size={options.kid_subset_size} is larger than num_samples={num_samples}: "
            f"raise num_samples or set kid_subset_size <= {num_samples}"
        )


def _check_kid_reference(real: Statistics, options: MetricOptions) -> None:
    if real.n is not None and real.n < options.kid_subset_size:
        raise ValueError(
            f"kid_subset_size={options.kid_subset_size} is larger than the {real.n} real samples; "
            "lower kid_subset_size or use more real data"
        )


def _cmmd(real: Statistics, fake: Statistics, options: MetricOptions, group: Group = None) -> dict[str, float]:
    value = cmmd(real.features, fake.features, options.cmmd_sigma, options.cmmd_scale, distributed=True, group=group)
    return {"cmmd": value}


METRICS: dict[str, MetricSpec] = {
    "fid": MetricSpec("fid", ("fid",), "features", moments=True, features=False, compute=_fid, prepare=_prepare_fid),
    "kid": MetricSpec(
        "kid",
        ("kid", "kid_std"),
        "features",
        moments=False,
        features=True,
        compute=_kid,
        options=("kid_subsets", "kid_subset_size", "seed"),
        check_config=_check_kid_config,
        check_reference=_check_kid_reference,
    ),  # fmt: skip
    "cmmd": MetricSpec(
        "cmmd", ("cmmd",), "cmmd", moments=False, features=True, compute=_cmmd, options=("cmmd_sigma", "cmmd_scale")
    ),  # fmt: skip
}


def check_metric_names(names: Iterable[str]) -> tuple[str, ...]:
    """The names as a tuple, or ValueError listing the known ones."""
    names = tuple(names) if not isinstance(names, str) else (names,)
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or list(names)}; choose from {tuple(METRICS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"metrics lists a name twice: {list(names)}")
    return names


def specs(names: Iterable[str]) -> list[MetricSpec]:
    """Table entries for ``names``, in order."""
    return [METRICS[n] for n in check_metric_names(names)]


def slot_needs(names: Iterable[str]) -> dict[str, tuple[bool, bool]]:
    """{slot: (moments, features)} for the metrics ``names``, in first-use order."""
    needs: dict[str, tuple[bool, bool]] = {}
    for spec in specs(names):
        moments, features = needs.get(spec.slot, (False, False))
        needs[spec.slot] = (moments or spec.moments, features or spec.features)
    return needs


def metric_keys(names: Iterable[str]) -> list[str]:
    """Every key the metrics ``names`` log, in order."""
    return [key for spec in specs(names) for key in spec.keys]


def nan_values(names: Iterable[str]) -> dict[str, float]:
    """What is logged when an evaluation has no valid value: NaN for every key, never a made-up number."""
    return {key: math.nan for key in metric_keys(names)}


def check_config(names: Iterable[str], options: MetricOptions, num_samples: int) -> None:
    """Each metric's own checks of its options against the generated sample count."""
    for spec in specs(names):
        if spec.check_config is not None:
            spec.check_config(options, num_samples)


def prepare_reference(names: Iterable[str], reference: Mapping[str, Statistics], options: MetricOptions) -> None:
    """Check the reference against each metric, then run its reference-side work once (cached in
    ``Statistics.prepared``)."""
    for spec in specs(names):
        if spec.check_reference is not None:
            spec.check_reference(reference[spec.slot], options)
        if spec.prepare is not None:
            spec.prepare(reference[spec.slot], options)


def compute(
    names: Iterable[str],
    real: Mapping[str, Statistics],
    fake: Mapping[str, Statistics],
    options: MetricOptions,
    group: Group = None,
) -> dict[str, float]:
    """Every metric in ``names`` from merged statistics; a collective call, identical on every rank."""
    values: dict[str, float] = {}
    for spec in specs(names):
        values.update(spec.compute(real[spec.slot], fake[spec.slot], options, group))
    return values
