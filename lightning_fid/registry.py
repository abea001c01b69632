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
from lightning_fid.metrics.entries import (
    Compute,
    MetricOptions,
    ball_entry,
    check_class_reference,
    check_kid_config,
    check_kid_reference,
    cmmd_entry,
    fid_inf_entry,
    fid_per_class_entry,
    frechet_entry,
    inception_score_entry,
    intra_fid_entry,
    kid_entry,
    prepare_frechet,
)
from lightning_fid.stats import Statistics


def _inception(weights_path: Any = None, logits: bool = False) -> nn.Module:
    from lightning_fid.extractors.inception import InceptionV3

    return InceptionV3(weights_path, logits=logits)


def _clip(weights_path: Any = None, logits: bool = False) -> nn.Module:
    from lightning_fid.extractors.clip import CLIP

    return CLIP(weights_path)


def _dinov2(weights_path: Any = None, logits: bool = False) -> nn.Module:
    from lightning_fid.extractors.dinov2 import DINOv2

    return DINOv2(weights_path)


@dataclass(frozen=True)
class SlotSpec:
    """An extractor slot: features shared by every metric that names it (one forward pass)."""

    name: str
    argument: str | None  # GenerativeMetrics argument that overrides the network (None: standard only)
    weights: str  # published weights short name: `lightning-fid download <weights>`, CLI --<weights>-weights
    default: Callable[..., nn.Module]  # (weights path, logits=...) -> the standard network
    output: int = 0  # which output of the standard network (Inception: 0 pool features, 1 logits)
    dim: int = 0  # the output's size when it is not the network's primary one


SLOTS: dict[str, SlotSpec] = {
    "features": SlotSpec("features", "feature_extractor", "inception", _inception),
    "logits": SlotSpec("logits", None, "inception", _inception, output=1, dim=1008),
    "cmmd": SlotSpec("cmmd", "cmmd_extractor", "clip", _clip),
    "dinov2": SlotSpec("dinov2", "dinov2_extractor", "dinov2", _dinov2),
}


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
    per_class: bool = False  # needs the slot's moments per class (labels on both sides)


METRICS: dict[str, MetricSpec] = {
    "fid": MetricSpec(
        "fid", ("fid",), "features", moments=True, features=False, compute=frechet_entry("fid"), prepare=prepare_frechet
    ),  # fmt: skip
    "kid": MetricSpec(
        "kid",
        ("kid", "kid_std"),
        "features",
        moments=False,
        features=True,
        compute=kid_entry,
        options=("kid_subsets", "kid_subset_size", "seed"),
        check_config=check_kid_config,
        check_reference=check_kid_reference,
    ),  # fmt: skip
    "cmmd": MetricSpec(
        "cmmd",
        ("cmmd",),
        "cmmd",
        moments=False,
        features=True,
        compute=cmmd_entry,
        options=("cmmd_sigma", "cmmd_scale"),
    ),  # fmt: skip
    "is": MetricSpec(
        "is",
        ("is", "is_std"),
        "logits",
        moments=False,
        features=True,
        compute=inception_score_entry,
        options=("is_splits",),
        lower_is_better=False,
    ),
    "precision": MetricSpec(
        "precision",
        ("precision",),
        "features",
        moments=False,
        features=True,
        compute=ball_entry("precision"),
        options=("pr_k",),
        lower_is_better=False,
    ),
    "recall": MetricSpec(
        "recall",
        ("recall",),
        "features",
        moments=False,
        features=True,
        compute=ball_entry("recall"),
        options=("pr_k",),
        lower_is_better=False,
    ),
    "density": MetricSpec(
        "density",
        ("density",),
        "features",
        moments=False,
        features=True,
        compute=ball_entry("density"),
        options=("dc_k",),
        lower_is_better=False,
    ),
    "coverage": MetricSpec(
        "coverage",
        ("coverage",),
        "features",
        moments=False,
        features=True,
        compute=ball_entry("coverage"),
        options=("dc_k",),
        lower_is_better=False,
    ),
    "fid_inf": MetricSpec(
        "fid_inf",
        ("fid_inf",),
        "features",
        moments=True,
        features=True,
        compute=fid_inf_entry,
        options=("fid_inf_points", "seed"),
        prepare=prepare_frechet,
    ),
    "fd_dinov2": MetricSpec(
        "fd_dinov2",
        ("fd_dinov2",),
        "dinov2",
        moments=True,
        features=False,
        compute=frechet_entry("fd_dinov2"),
        prepare=prepare_frechet,
    ),  # fmt: skip
    "fid_per_class": MetricSpec(
        "fid_per_class",
        (),
        "features",
        moments=False,
        features=False,
        compute=fid_per_class_entry,
        check_reference=check_class_reference,
        per_class=True,
    ),
    "intra_fid": MetricSpec(
        "intra_fid",
        ("intra_fid",),
        "features",
        moments=False,
        features=False,
        compute=intra_fid_entry,
        check_reference=check_class_reference,
        per_class=True,
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


def per_class_slots(names: Iterable[str]) -> set[str]:
    """Slots whose moments the metrics ``names`` need per class."""
    return {spec.slot for spec in specs(names) if spec.per_class}


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
