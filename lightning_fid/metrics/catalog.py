"""Metric names: the strings ``metrics=`` and the CLI's ``--metrics`` accept, and their objects.

A string means the default instance of its class (``"kid"`` is ``KID()``); ``"precision"`` and
``"recall"`` (``"density"`` and ``"coverage"``) report one value each of one k-NN pass and, given
together, become one object. Objects pass through unchanged, user subclasses of
:class:`~lightning_fid.metrics.Metric` included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from lightning_fid.metrics.base import Metric, RunInfo
from lightning_fid.metrics.cmmd import CMMD
from lightning_fid.metrics.density_coverage import DensityCoverage
from lightning_fid.metrics.fd_dinov2 import FDDINOv2
from lightning_fid.metrics.fid import FID
from lightning_fid.metrics.fid_infinity import FIDInfinity
from lightning_fid.metrics.inception_score import InceptionScore
from lightning_fid.metrics.intra_fid import IntraFID
from lightning_fid.metrics.kid import KID
from lightning_fid.metrics.per_class_fid import PerClassFID
from lightning_fid.metrics.precision_recall import PrecisionRecall
from lightning_fid.metrics.sfid import SFID

#: every metric name and how its default instance is made
METRICS: dict[str, Callable[[], Metric]] = {
    "fid": FID,
    "sfid": SFID,
    "kid": KID,
    "cmmd": CMMD,
    "is": InceptionScore,
    "precision": lambda: PrecisionRecall(report="precision"),
    "recall": lambda: PrecisionRecall(report="recall"),
    "density": lambda: DensityCoverage(report="density"),
    "coverage": lambda: DensityCoverage(report="coverage"),
    "fid_inf": FIDInfinity,
    "fd_dinov2": FDDINOv2,
    "fid_per_class": PerClassFID,
    "intra_fid": IntraFID,
}
_PAIRS = {("precision", "recall"): PrecisionRecall, ("density", "coverage"): DensityCoverage}


def resolve_metrics(metrics: str | Metric | Iterable[str | Metric]) -> tuple[Metric, ...]:
    """Metric objects for names and objects, in order (see the module docstring).

    Raises:
        ValueError: an unknown name, a name or object given twice, an empty list, or something that
            is neither a name nor a :class:`Metric`.
    """
    items: list[Any] = [metrics] if isinstance(metrics, (str, Metric)) else list(metrics)
    if not items:
        raise ValueError(f"no metrics given; choose from {tuple(METRICS)} or pass Metric objects")
    names = [m for m in items if isinstance(m, str)]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {tuple(METRICS)} or pass Metric objects")
    wrong = [m for m in items if not isinstance(m, (str, Metric))]
    if wrong:
        raise ValueError(f"metrics must be names or lightning_fid.metrics.Metric objects, got {wrong!r:.120}")
    if len(set(names)) != len(names) or len({id(m) for m in items if isinstance(m, Metric)}) != len(items) - len(names):
        raise ValueError(f"metrics lists a name or object twice: {items}")
    out: list[Metric] = []
    for item in items:
        if isinstance(item, Metric):
            out.append(item)
            continue
        pair = next((p for p in _PAIRS if item in p and set(p) <= set(names)), None)
        if pair is None:
            out.append(METRICS[item]())
        elif item == pair[0]:  # both given: one object reports both, at the first one's place
            out.append(_PAIRS[pair]())
    for metric in out:
        metric.options()  # every option readable: the identity, the cache key and repr need them
    check_unique_keys(out, RunInfo(num_samples=2))
    return tuple(out)


def check_unique_keys(metrics: Iterable[Metric], run: RunInfo) -> None:
    """Refuse two metrics that would log the same key (give one of them another ``key=``)."""
    seen: dict[str, Metric] = {}
    for metric in metrics:
        for key in metric.keys(run):
            if key in seen:
                raise ValueError(f"{seen[key]!r} and {metric!r} both log {key!r}: give one of them key='...'")
            seen[key] = metric
