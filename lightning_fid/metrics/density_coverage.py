"""Density and coverage (Naeem et al. 2020) as a metric of the callback and the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from lightning_fid.metrics._knn_errors import density_coverage_estimate
from lightning_fid.metrics.base import Context, Needs, RunInfo
from lightning_fid.metrics.prdc import density_coverage
from lightning_fid.metrics.precision_recall import KNNMetric, real_radii

if TYPE_CHECKING:
    from lightning_fid.engine._stats import Statistics


class DensityCoverage(KNNMetric):
    """Density and coverage (Naeem et al. 2020) on Inception pool features, as the ``prdc`` package
    computes them. Logs ``density`` (may exceed 1) and ``coverage``; higher is better.

    Args:
        k: the neighbour that sets each real ball's radius (reference: 5).
        report: ``"density"``, ``"coverage"`` or both.
        key: when given, the keys are ``<key>_density`` / ``<key>_coverage``.
        extractor: a network to use instead of Inception-v3.
    """

    name = "density_coverage"
    needs = Needs(features=True)
    higher_is_better = True
    values = ("density", "coverage")

    def __init__(
        self,
        k: int = 5,
        report: str | Sequence[str] = ("density", "coverage"),
        *,
        key: str | None = None,
        extractor: nn.Module | None = None,
    ) -> None:
        super().__init__(k, report, key, extractor)

    def check_run(self, run: RunInfo) -> None:  # only real balls are used: any generated count works
        return None

    def _pair(self, real: Statistics, fake: Statistics, context: Context) -> tuple[Any, Any]:
        opts = {"real_radii": real_radii(real, self.k, context), "distributed": True, "group": context.group}
        if context.groups:  # error bars: per-group ball counts from the same pass
            return density_coverage_estimate(real.features, fake.features, self.k, groups=context.groups, **opts)
        return density_coverage(real.features, fake.features, self.k, **opts)
