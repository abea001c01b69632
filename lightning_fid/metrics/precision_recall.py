"""Improved precision and recall (Kynkäänniemi et al. 2019) as a metric of the callback and the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from lightning_fid.metrics._knn_errors import precision_recall_estimate
from lightning_fid.metrics.base import Context, Metric, Needs, RunInfo, check_int
from lightning_fid.metrics.prdc import knn_radii, precision_recall

if TYPE_CHECKING:
    from lightning_fid.engine._stats import Statistics


def real_radii(real: Statistics, k: int, context: Context) -> Any:
    """The real set's k-NN radii, computed once per run and shared by every k-NN metric with this k."""
    key = ("knn_radii", context.network, k)
    if key not in context.reference:
        context.reference[key] = knn_radii(real.features, k, distributed=True, group=context.group)
    return context.reference[key]


def check_report(report: str | Sequence[str], allowed: tuple[str, str]) -> tuple[str, ...]:
    """``report`` as a tuple of names among ``allowed`` (at least one, no repeats)."""
    names = (report,) if isinstance(report, str) else tuple(report)
    if not names or len(set(names)) != len(names) or not set(names) <= set(allowed):
        raise ValueError(f"report={report!r}: choose one or both of {allowed}")
    return tuple(n for n in allowed if n in names)


class KNNMetric(Metric):
    """Shared by the k-NN ball metrics: ``k``, the values reported, their keys and their checks."""

    values: tuple[str, str] = ("", "")

    def __init__(self, k: int, report: str | Sequence[str], key: str | None, extractor: nn.Module | None) -> None:
        super().__init__(key=key, extractor=extractor)
        self.k = check_int(k, f"{type(self).__name__} k", 1)
        self.report = check_report(report, self.values)

    def keys(self, run: RunInfo | None = None) -> tuple[str, ...]:
        """The reported values' names, or ``<key>_<value>`` when ``key`` is given."""
        return self.report if self.key == type(self).name else tuple(f"{self.key}_{r}" for r in self.report)

    def check_run(self, run: RunInfo) -> None:
        if self.k >= run.smallest:
            raise ValueError(
                f"{type(self).__name__}(k={self.k}) needs more than k generated samples, but "
                f"num_samples={run.smallest}: raise num_samples or lower k"
            )

    def check_reference(self, real: Statistics, run: RunInfo) -> None:
        if real.n is not None and self.k >= real.n:
            raise ValueError(
                f"{type(self).__name__}(k={self.k}) needs more than k real samples, but there are "
                f"{real.n}: use more real data (num_real) or lower k"
            )

    def _pair(self, real: Statistics, fake: Statistics, context: Context) -> tuple[float, float]:
        raise NotImplementedError

    def error_keys(self, run: RunInfo | None = None) -> tuple[str, ...]:
        return self.keys(run)

    def compute(self, real: Statistics, fake: Statistics, context: Context) -> dict[str, Any]:
        # Two objects with the same k (say "precision" and "recall" given apart) share one pass.
        memo = (type(self).name, context.network, self.k, context.groups)
        if memo not in context.shared:
            context.shared[memo] = self._pair(real, fake, context)
        pair = dict(zip(self.values, context.shared[memo]))
        return dict(zip(self.keys(), (pair[r] for r in self.report)))


class PrecisionRecall(KNNMetric):
    """Improved precision and recall (Kynkäänniemi et al. 2019) on Inception pool features, with the
    balls' boundary included, as torch-fidelity and StyleGAN2-ADA. Logs ``precision`` and ``recall``
    (higher is better); the real balls' radii are computed once per run. With error bars, ``<key>_se`` for
    each (:mod:`lightning_fid.metrics._knn_errors`: recall's replicates keep the generated balls' radii).

    Args:
        k: the neighbour that sets each ball's radius (reference: 3).
        report: ``"precision"``, ``"recall"`` or both (the strings ``"precision"`` / ``"recall"`` in
            ``metrics=`` give one each).
        key: when given, the keys are ``<key>_precision`` / ``<key>_recall``.
        extractor: a network to use instead of Inception-v3.
    """

    name = "precision_recall"
    needs = Needs(features=True)
    higher_is_better = True
    values = ("precision", "recall")

    def __init__(
        self,
        k: int = 3,
        report: str | Sequence[str] = ("precision", "recall"),
        *,
        key: str | None = None,
        extractor: nn.Module | None = None,
    ) -> None:
        super().__init__(k, report, key, extractor)

    def _pair(self, real: Statistics, fake: Statistics, context: Context) -> tuple[Any, Any]:
        opts = {"real_radii": real_radii(real, self.k, context), "distributed": True, "group": context.group}
        if context.groups:  # error bars: per-group ball counts from the same pass
            return precision_recall_estimate(real.features, fake.features, self.k, groups=context.groups, **opts)
        return precision_recall(real.features, fake.features, self.k, **opts)
