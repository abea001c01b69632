"""The pure functions behind each entry of the metric table, and the options they read.

Each compute function maps (real statistics, generated statistics, options, process group) to the
entry's logged values, identically on every rank; ``prepare`` / ``check`` functions do the
reference-side work (cached in ``Statistics.prepared``) and the configuration checks. No Lightning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightning_fid.distributed import Group
from lightning_fid.metrics.cmmd import cmmd
from lightning_fid.metrics.fid import frechet_distance, reference_factor, warn_if_rank_deficient
from lightning_fid.metrics.fid_infinity import fid_infinity
from lightning_fid.metrics.inception_score import inception_score
from lightning_fid.metrics.kid import kid, kid_real_terms
from lightning_fid.metrics.prdc import density_coverage, knn_radii, precision_recall
from lightning_fid.stats import Statistics

Compute = Callable[[Statistics, Statistics, "MetricOptions", Any], dict[str, float]]


@dataclass(frozen=True)
class MetricOptions:
    """Parameters of the metric computations (checked when constructed).

    Args:
        kid_subsets: KID subsets (torch-fidelity's 100 by default).
        kid_subset_size: samples per KID subset (1000), capped at the generated sample count.
        seed: seed of KID's subset draw (the callback uses its noise seed).
        cmmd_sigma: CMMD's Gaussian kernel bandwidth (reference: 10).
        cmmd_scale: CMMD's output scale (reference: 1000).
        is_splits: Inception Score splits (reference: 10), over the fixed global sample order.
        pr_k: k of precision / recall's nearest-neighbour balls (Kynkäänniemi et al.: 3).
        dc_k: k of density / coverage's balls (Naeem et al.: 5).
        fid_inf_points: sample sizes FID is computed at for FID-infinity (Chong & Forsyth: 15).
    """

    kid_subsets: int = 100
    kid_subset_size: int = 1000
    seed: int = 0
    cmmd_sigma: float = 10.0
    cmmd_scale: float = 1000.0
    is_splits: int = 10
    pr_k: int = 3
    dc_k: int = 5
    fid_inf_points: int = 15

    def __post_init__(self) -> None:
        for name, least in (("is_splits", 1), ("pr_k", 1), ("dc_k", 1), ("fid_inf_points", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if not isinstance(self.kid_subsets, int) or self.kid_subsets < 1:
            raise ValueError(f"kid_subsets must be a positive integer, got {self.kid_subsets!r}")
        if not isinstance(self.kid_subset_size, int) or self.kid_subset_size < 2:
            raise ValueError(f"kid_subset_size must be an integer >= 2, got {self.kid_subset_size!r}")
        if not (isinstance(self.cmmd_sigma, (int, float)) and math.isfinite(self.cmmd_sigma) and self.cmmd_sigma > 0):
            raise ValueError(f"cmmd_sigma must be a positive finite number, got {self.cmmd_sigma!r}")
        if not (isinstance(self.cmmd_scale, (int, float)) and math.isfinite(self.cmmd_scale) and self.cmmd_scale > 0):
            raise ValueError(f"cmmd_scale must be a positive finite number, got {self.cmmd_scale!r}")


def frechet_entry(key: str) -> Compute:
    def compute(real: Statistics, fake: Statistics, options: MetricOptions, group: Group = None) -> dict[str, float]:
        warn_if_rank_deficient(fake.n or 0, fake.dim, "generated samples")
        factor = real.prepared.get("fid_factor")
        return {key: frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma, sigma1_sqrt=factor)}

    return compute


def prepare_frechet(real: Statistics, options: MetricOptions) -> None:
    real.prepared["fid_factor"] = reference_factor(real.sigma)


def fid_inf_entry(real: Statistics, fake: Statistics, options: MetricOptions, group: Group = None) -> dict[str, float]:
    value = fid_infinity(real.mu, real.sigma, fake.features, num_points=options.fid_inf_points, seed=options.seed,
                         real_factor=real.prepared.get("fid_factor"), distributed=True, group=group)  # fmt: skip
    return {"fid_inf": value}


def inception_score_entry(
    real: Statistics, fake: Statistics, options: MetricOptions, group: Group = None
) -> dict[str, float]:
    mean, std = inception_score(fake.features, splits=options.is_splits)
    return {"is": mean, "is_std": std}


def radii_once(real: Statistics, k: int, group: Group) -> Any:
    """The real set's k-NN radii: computed once per run, at the first evaluation."""
    key = ("knn_radii", k)
    if key not in real.prepared:
        real.prepared[key] = knn_radii(real.features, k, distributed=True, group=group)
    return real.prepared[key]


def ball_entry(key: str) -> Compute:
    """precision / recall (k = pr_k) or density / coverage (k = dc_k); each pair computed once per
    evaluation (kept in the generated statistics' ``prepared``) and shared by its two keys."""
    pair = ("precision", "recall") if key in ("precision", "recall") else ("density", "coverage")

    def compute(real: Statistics, fake: Statistics, options: MetricOptions, group: Group = None) -> dict[str, float]:
        k = options.pr_k if pair[0] == "precision" else options.dc_k
        if pair not in fake.prepared:
            function = precision_recall if pair[0] == "precision" else density_coverage
            fake.prepared[pair] = function(real.features, fake.features, k, real_radii=radii_once(real, k, group),
                                           distributed=True, group=group)  # fmt: skip
        return {key: fake.prepared[pair][pair.index(key)]}

    return compute


def _per_class(real: Statistics, fake: Statistics, group: Group = None) -> dict[int, float]:
    """FID of each class (real class c against samples generated with label c); memoised per evaluation."""
    if "per_class" not in fake.prepared:
        values = {}
        for c, generated in sorted(fake.classes.items()):
            reference = real.classes.get(c)
            if reference is None or not reference.has_moments or not generated.has_moments:
                values[c] = math.nan  # fewer than 2 samples on a side: no covariance
                continue
            key = ("class_factor", c)
            if key not in real.prepared:
                real.prepared[key] = reference_factor(reference.sigma)
            warn_if_rank_deficient(generated.n or 0, generated.dim, f"generated samples of class {c}")
            values[c] = frechet_distance(reference.mu, reference.sigma, generated.mu, generated.sigma,
                                         sigma1_sqrt=real.prepared[key])  # fmt: skip
        fake.prepared["per_class"] = values
    return fake.prepared["per_class"]


def fid_per_class_entry(
    real: Statistics, fake: Statistics, options: MetricOptions, group: Group = None
) -> dict[str, float]:
    return {f"fid/class_{c}": value for c, value in _per_class(real, fake, group).items()}


def intra_fid_entry(
    real: Statistics, fake: Statistics, options: MetricOptions, group: Group = None
) -> dict[str, float]:
    """Mean per-class FID over all classes (Miyato & Koyama 2018); NaN, with a warning, if a class
    has fewer than 2 generated samples."""
    values = _per_class(real, fake, group)
    missing = [c for c, v in values.items() if math.isnan(v)]
    if missing:
        warnings.warn(f"intra-FID is NaN: classes {missing[:10]} have fewer than 2 generated samples", stacklevel=2)
    return {"intra_fid": math.fsum(values.values()) / len(values) if values else math.nan}


def check_class_reference(real: Statistics, options: MetricOptions) -> None:
    thin = [c for c, s in sorted(real.classes.items()) if not s.has_moments]
    if not real.classes or thin:
        raise ValueError(
            f"per-class FID needs at least 2 real samples of every class; classes {thin[:10]} have fewer "
            "(check label_key= and that conditions= uses the real data's class ids)"
        )


def kid_entry(real: Statistics, fake: Statistics, options: MetricOptions, group: Group = None) -> dict[str, float]:
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


def check_kid_config(options: MetricOptions, num_samples: int) -> None:
    if options.kid_subset_size > num_samples:
        raise ValueError(
            f"kid_subset_size={options.kid_subset_size} is larger than num_samples={num_samples}: "
            f"raise num_samples or set kid_subset_size <= {num_samples}"
        )


def check_kid_reference(real: Statistics, options: MetricOptions) -> None:
    if real.n is not None and real.n < options.kid_subset_size:
        raise ValueError(
            f"kid_subset_size={options.kid_subset_size} is larger than the {real.n} real samples; "
            "lower kid_subset_size or use more real data"
        )


def cmmd_entry(real: Statistics, fake: Statistics, options: MetricOptions, group: Group = None) -> dict[str, float]:
    value = cmmd(real.features, fake.features, options.cmmd_sigma, options.cmmd_scale, distributed=True, group=group)
    return {"cmmd": value}
