"""Per-class FID: the FID of each class, real class c against the samples generated with label c."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import nn

from lightning_fid.metrics.base import Context, Metric, Needs, RunInfo
from lightning_fid.metrics.fid import frechet_distance, reference_factor, warn_if_rank_deficient

if TYPE_CHECKING:
    from lightning_fid.engine._stats import Statistics


def class_fids(real: Statistics, fake: Statistics, context: Context) -> dict[int, float]:
    """FID of each class (NaN where a side has fewer than 2 samples of it), once per evaluation and
    shared by every per-class metric; each class's reference factor is computed once per run."""
    memo = ("class_fids", context.network)
    if memo in context.shared:
        return context.shared[memo]
    values = {}
    for c, generated in sorted(fake.classes.items()):
        reference = real.classes.get(c)
        if reference is None or not reference.has_moments or not generated.has_moments:
            values[c] = math.nan
            continue
        key = ("class_factor", context.network, c)
        if key not in context.reference:
            context.reference[key] = reference_factor(reference.sigma)
        warn_if_rank_deficient(generated.n or 0, generated.dim, f"generated samples of class {c}")
        values[c] = frechet_distance(
            reference.mu, reference.sigma, generated.mu, generated.sigma, sigma1_sqrt=context.reference[key]
        )
    context.shared[memo] = values
    return values


def check_class_reference(real: Statistics, run: RunInfo) -> None:
    """Refuse a reference without at least 2 real samples of each class the generated labels use."""
    thin = [c for c in range(run.classes) if c not in real.classes or not real.classes[c].has_moments]
    if not real.classes or thin:
        raise ValueError(
            f"per-class FID needs at least 2 real samples of every class; classes {thin[:10]} have fewer "
            "(check RealData(label_key=...) and that conditions= uses the real data's class ids)"
        )


class PerClassFID(Metric):
    """The FID of each class: logs ``fid/class_<c>`` for every class c of ``conditions``.

    Real labels come from ``RealData(label_key=...)``, generated labels from the callback's
    ``conditions``; each class keeps one d x d float64 covariance per sample set.

    Args:
        key: the keys' stem (default ``"fid"``: ``fid/class_<c>``).
        extractor: a network to use instead of Inception-v3.
    """

    name = "fid_per_class"
    needs = Needs(per_class=True)

    def __init__(self, *, key: str | None = None, extractor: nn.Module | None = None) -> None:
        super().__init__(key=key, extractor=extractor)

    def keys(self, run: RunInfo | None = None) -> tuple[str, ...]:
        stem = "fid" if self.key == type(self).name else self.key
        return tuple(f"{stem}/class_{c}" for c in range(run.classes if run is not None else 0))

    def check_reference(self, real: Statistics, run: RunInfo) -> None:
        check_class_reference(real, run)

    def compute(self, real: Statistics, fake: Statistics, context: Context) -> dict[str, float]:
        stem = "fid" if self.key == type(self).name else self.key
        return {f"{stem}/class_{c}": value for c, value in class_fids(real, fake, context).items()}
