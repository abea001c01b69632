"""The public base class of every metric the callback, the evaluator and the CLI compute.

A metric is one object that says everything about itself: its options (constructor arguments whose
defaults are the reference values, checked when constructed), the keys it logs, whether lower or
higher is better, what it consumes (which network output, float64 moments, the kept features, or
per-class moments), its checks against the run (sample counts, classes, the reference), its
once-per-run reference-side work and its pure compute. The engine drives every metric through the
same sampling, extraction, merge, cache, logging, history and resume, so a subclass written by a
user gets all of them. No Lightning here.

Example, a Fréchet distance on a domain encoder, logged as ``fd_domain``::

    class DomainFD(Metric):
        name = "fd_domain"
        needs = Needs(moments=True)

        def compute(self, real, fake, context):
            return {self.key: frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)}

    GenerativeMetrics(real=..., metrics=["fid", DomainFD(extractor=my_encoder)])
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

if TYPE_CHECKING:
    from lightning_fid.engine._stats import Statistics

#: the standard networks a metric can ask for, by the name of their published weights
NETWORKS = ("inception", "clip", "dinov2")
#: named outputs of the standard networks (Inception gives its pool features, its logits and sFID's
#: spatial features in one pass)
OUTPUTS = {"features": 0, "logits": 1, "spatial": 2}


@dataclass(frozen=True)
class Needs:
    """What a metric consumes from each sample set.

    Args:
        network: the standard network it runs on when no ``extractor`` is given: ``"inception"``,
            ``"clip"`` or ``"dinov2"``.
        output: ``"features"`` or, for Inception, ``"logits"`` (Inception Score's input) or
            ``"spatial"`` (sFID's 2023-d mixed_6/conv features).
        moments: float64 mean and covariance of the features (Fréchet distances).
        features: the feature rows themselves, in global sample order (kernel and k-NN metrics).
        per_class: float64 moments per class (real labels from ``label_key``, generated from ``conditions``).
    """

    network: str = "inception"
    output: str = "features"
    moments: bool = False
    features: bool = False
    per_class: bool = False

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise ValueError(f"Needs(network={self.network!r}); choose from {NETWORKS}")
        if self.output not in OUTPUTS:
            raise ValueError(f"Needs(output={self.output!r}); choose from {tuple(OUTPUTS)}")
        if not (self.moments or self.features or self.per_class):
            raise ValueError("a metric needs moments, features or per-class moments of some features")


@dataclass(frozen=True)
class RunInfo:
    """What a metric may check its options against before anything is computed.

    Args:
        num_samples: generated samples per evaluation (the largest of the run, final evaluation included).
        classes: number of classes of per-class metrics (0 without).
        min_samples: the smallest generated sample count of the run (the regular evaluations').
    """

    num_samples: int
    classes: int = 0
    min_samples: int | None = None

    @property
    def smallest(self) -> int:
        """The smallest number of generated samples any evaluation of the run scores."""
        return self.num_samples if self.min_samples is None else self.min_samples


@dataclass
class Context:
    """What :meth:`Metric.compute` gets besides the statistics.

    Args:
        seed: the run's noise seed (metrics with a random draw of their own default to it).
        state: this metric's run state: reference-side work done once (by :meth:`Metric.prepare` or
            lazily at the first evaluation), kept until the reference changes.
        shared: a memo shared by all metrics of one evaluation (precision and recall share one pass).
        reference: a memo shared by all metrics for the whole run (reference-side work that several
            metrics need, such as the real set's k-NN radii); cleared when the reference changes.
        group: the torch.distributed process group (None: the default one, or no distribution).
        network: the identity of the network the metric reads (part of ``shared`` memo keys).
        groups: the jackknife groups of error bars (0: off). When set, :meth:`Metric.compute` returns an
            :class:`~lightning_fid.metrics.Estimate` (value and replicates) for each of its
            :meth:`Metric.error_keys`; generated sample ``i`` is in group ``i % groups``.
    """

    seed: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    shared: dict[Any, Any] = field(default_factory=dict)
    reference: dict[Any, Any] = field(default_factory=dict)
    group: Any = None
    network: str = ""
    groups: int = 0


def check_int(value: Any, name: str, least: int) -> int:
    """``value`` if it is an integer >= ``least``, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return value


def check_positive(value: Any, name: str) -> float:
    """``value`` if it is a positive finite number, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class Metric:
    """Base class of every metric: subclass it, set ``name`` and ``needs``, implement :meth:`compute`.

    Args:
        key: the logged key (default: the class's ``name``); a metric with several values logs the
            others as ``<key>_<value>`` (``kid_std``). Two metrics in one callback must not share keys.
        extractor: a network (any ``nn.Module`` mapping images to (N, D) features) to run instead of
            the standard one ``needs`` names. Metrics given the same module share its forward pass.

    Raises:
        ValueError: an option outside its valid range (subclasses check theirs when constructed).

    Subclasses store each constructor option under an attribute of the same name; those options
    (besides ``key`` and ``extractor``) are the metric's identity, which keys the reference cache and
    the resume check, and :meth:`__repr__` shows them.
    """

    #: the metric's name: its default key and its string form in ``metrics=`` (``"fid"``)
    name: ClassVar[str] = ""
    #: what it consumes
    needs: ClassVar[Needs] = Needs(moments=True)
    #: the direction of its first key (for ``best``, early stopping and checkpoint advice)
    higher_is_better: ClassVar[bool] = False

    def __init__(self, *, key: str | None = None, extractor: nn.Module | None = None) -> None:
        if not type(self).name:
            raise TypeError(f"{type(self).__name__} must set the class attribute `name`")
        if key is not None and (not isinstance(key, str) or not key):
            raise ValueError(f"key must be a non-empty string, got {key!r}")
        if extractor is not None and not isinstance(extractor, nn.Module):
            raise ValueError(f"extractor must be a torch.nn.Module, got {type(extractor).__name__}")
        self.key = key or type(self).name
        self.extractor = extractor

    # ------------------------------------------------------------------ identity
    def options(self) -> dict[str, Any]:
        """The options that determine the number: every constructor argument besides ``key`` and
        ``extractor``, read from the attribute of the same name."""
        names = [
            p.name
            for cls in type(self).__mro__
            if cls is not Metric and "__init__" in vars(cls)
            for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in ("key", "extractor")
        ]
        missing = [n for n in dict.fromkeys(names) if not hasattr(self, n)]
        if missing:
            raise ValueError(
                f"{type(self).__name__} must store each constructor option under an attribute of the "
                f"same name (they are its identity): missing {missing}"
            )
        return {n: getattr(self, n) for n in dict.fromkeys(names)}

    def identity(self) -> dict[str, Any]:
        """Class, key and options: what the reference cache and the resume check compare."""
        return {"metric": f"{type(self).__module__}.{type(self).__qualname__}", "key": self.key, **self.options()}

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self.options().items()]
        if self.key != type(self).name:
            parts.append(f"key={self.key!r}")
        if self.extractor is not None:
            parts.append(f"extractor={type(self.extractor).__name__}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # ------------------------------------------------------------------ what it logs
    def keys(self, run: RunInfo | None = None) -> tuple[str, ...]:
        """Every key it logs (before the callback's prefix), its main value first."""
        return (self.key,)

    def error_keys(self, run: RunInfo | None = None) -> tuple[str, ...]:
        """The keys that get a standard error ``<key>_se`` (and paired comparisons): :meth:`compute`
        returns an :class:`~lightning_fid.metrics.Estimate` for each when ``context.groups`` is set.
        None by default: a metric of yours logs no error bars unless it declares and computes them."""
        return ()

    def nan_values(self, run: RunInfo | None = None) -> dict[str, float]:
        """What is logged when an evaluation has no valid value: NaN for every key."""
        return {k: math.nan for k in self.keys(run)}

    # ------------------------------------------------------------------ checks and reference work
    def check_run(self, run: RunInfo) -> None:
        """Refuse options that cannot work with this run (sample counts, classes), before anything
        is computed. Raise ValueError naming the option to change."""

    def check_reference(self, real: Statistics, run: RunInfo) -> None:
        """Refuse reference statistics this metric cannot be scored against, before training."""

    def prepare(self, real: Statistics, context: Context) -> None:
        """Reference-side work done once per run (kept in ``context.state``)."""

    # ------------------------------------------------------------------ the number
    def compute(self, real: Statistics, fake: Statistics, context: Context) -> dict[str, float]:
        """The logged values from merged real and generated statistics: a collective call that gives
        the same values on every rank."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute(real, fake, context)")


def values_of(metric: Metric, result: Mapping[str, float], run: RunInfo | None = None) -> dict[str, float]:
    """``result`` checked against the keys ``metric`` declares (a metric may not log undeclared keys)."""
    declared = metric.keys(run)
    if not isinstance(result, Mapping):
        raise ValueError(f"{metric!r} returned {type(result).__name__}, not a dict of values by key")
    extra = [k for k in result if k not in declared]
    if extra:
        raise ValueError(f"{metric!r} returned keys {extra} it does not declare in keys(): {list(declared)}")
    missing = [k for k in declared if k not in result]
    if missing:
        warnings.warn(f"{metric!r} returned no value for {missing}: logging NaN for them", stacklevel=3)
    out = {}
    for k in declared:
        value = result.get(k, math.nan)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            and not (hasattr(value, "numel") and value.numel() == 1)
        ):
            raise ValueError(f"{metric!r} returned {type(value).__name__} for {k!r}, not one number")
        out[k] = float(value)
    return out
