"""The metric step of the data walk: merged statistics in, every metric's logged values out.

A :class:`Scorer` holds the metrics, the slot each one reads, each metric's run state and the run's
shared reference-side memo. It checks the reference against every metric, runs their once-per-run
work, and scores a generated set. The evaluator and the CLI both use it. No Lightning.

With ``groups`` (error bars, :mod:`lightning_fid.metrics._jackknife`), every key a metric lists in
``error_keys`` is logged with ``<key>_se`` next to it, and :attr:`Scorer.estimates` keeps the last
evaluation's replicates (what paired comparisons between evaluations need).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from lightning_fid.engine._distributed import rank_and_world
from lightning_fid.engine._stats import Statistics
from lightning_fid.metrics._jackknife import Estimate
from lightning_fid.metrics.base import Context, Metric, RunInfo, values_of
from lightning_fid.metrics.catalog import check_unique_keys


def warn_rank_zero(message: str) -> None:
    """A warning on rank 0 only (every rank knows the same thing)."""
    if rank_and_world()[0] == 0:
        warnings.warn(message, stacklevel=3)


class Scorer:
    """Scores generated statistics against one reference for a fixed list of metrics.

    Args:
        metrics: the metric objects.
        slot_of: the slot each metric reads, in the same order.
        run: what the metrics check their options against.
        seed: the run's noise seed (metrics with a random draw of their own default to it).
        groups: jackknife groups of the error bars (0: none).

    Raises:
        ValueError: two metrics log one key, or a metric's options cannot work with ``run``.
    """

    def __init__(
        self, metrics: Sequence[Metric], slot_of: Sequence[str], run: RunInfo, seed: int = 0, groups: int = 0
    ) -> None:
        self.metrics = tuple(metrics)
        self.slot_of = tuple(slot_of)
        self.run = run
        self.seed = seed
        self.groups = groups
        self.estimates: dict[str, Estimate] = {}  # the last score()'s, by key
        check_unique_keys(self.metrics, run)
        for metric in self.metrics:
            metric.check_run(run)
        self.reset()
        keys = self.keys()
        if len(set(keys)) != len(keys):
            clash = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"with error bars the keys {clash} are logged twice: give a metric another key=")

    def reset(self) -> None:
        """Forget the run state (a new reference)."""
        self._state: list[dict[str, Any]] = [{} for _ in self.metrics]
        self._reference_memo: dict[Any, Any] = {}

    def _error_keys(self, metric: Metric) -> tuple[str, ...]:
        return metric.error_keys(self.run) if self.groups else ()

    def keys(self) -> list[str]:
        """Every key the metrics log, in order: each metric's keys, then its ``<key>_se``."""
        return [k for m in self.metrics for k in (*m.keys(self.run), *(e + "_se" for e in self._error_keys(m)))]

    def error_keys(self) -> dict[str, bool]:
        """The keys with error bars and, for each, whether higher is better (its metric's direction)."""
        return {k: m.higher_is_better for m in self.metrics for k in self._error_keys(m)}

    def grouped_slots(self) -> dict[str, int]:
        """The slots whose generated moments are kept per jackknife group: those a metric with error
        bars reads its moments from."""
        return {
            self.slot_of[i]: self.groups for i, m in enumerate(self.metrics) if m.needs.moments and self._error_keys(m)
        }

    def nan_values(self) -> dict[str, float]:
        """NaN for every key: what an evaluation without a valid value logs."""
        self.estimates = {}
        return {k: math.nan for k in self.keys()}

    def _context(self, i: int, shared: dict[Any, Any]) -> Context:
        return Context(
            seed=self.seed,
            state=self._state[i],
            shared=shared,
            reference=self._reference_memo,
            network=self.slot_of[i],
            groups=self.groups if self._error_keys(self.metrics[i]) else 0,
        )

    def _values(self, metric: Metric, result: Any) -> dict[str, float]:
        """The logged values of one metric's result: its estimates split into value and ``_se``."""
        estimates: dict[str, Estimate] = {}
        if isinstance(result, Mapping):
            estimates = {k: v for k, v in result.items() if isinstance(v, Estimate)}
            result = {k: v.value if isinstance(v, Estimate) else v for k, v in result.items()}
        values = values_of(metric, result, self.run)
        for key in self._error_keys(metric):
            estimate = estimates.get(key)
            if estimate is None:
                warn_rank_zero(f"lightning_fid: {metric!r} returned no replicates for {key!r}: logging NaN for its _se")
            else:
                self.estimates[key] = estimate
            values[key + "_se"] = estimate.se if estimate is not None else math.nan
        return values

    def prepare(self, reference: Mapping[str, Statistics]) -> None:
        """Check ``reference`` against every metric, then run each one's reference-side work once.

        Raises:
            ValueError: naming the metric and what to change.
        """
        self.reset()
        for i, metric in enumerate(self.metrics):
            real = reference[self.slot_of[i]]
            try:
                metric.check_reference(real, self.run)
            except ValueError as exc:
                raise ValueError(f"{metric!r}: {exc}") from None
            metric.prepare(real, self._context(i, {}))

    def try_user_metrics(self, reference: Mapping[str, Statistics]) -> None:
        """Compute every metric not built into lightning_fid once, on the reference against itself, so a
        user metric that cannot work is refused before training (built-in ones are tested).

        Raises:
            ValueError: naming the metric and what it raised or returned.
        """
        for i, metric in enumerate(self.metrics):
            if type(metric).__module__.startswith("lightning_fid."):
                continue
            real = reference[self.slot_of[i]]
            context = Context(seed=self.seed, state={}, shared={}, reference={}, network=self.slot_of[i])
            try:
                values = values_of(metric, metric.compute(real, real, context), self.run)
            except Exception as exc:
                raise ValueError(
                    f"{metric!r} fails on the reference statistics scored against themselves "
                    f"({type(exc).__name__}: {exc}); fix it before training"
                ) from exc
            del values

    def score(
        self,
        reference: Mapping[str, Statistics],
        fake: Mapping[str, Statistics],
        strict: bool = True,
        progress: bool = False,
    ) -> dict[str, float]:
        """Every metric's values (a collective call: identical on every rank). With ``strict=False``
        a metric that fails logs NaN for its keys with a warning naming it and the cause."""
        values: dict[str, float] = {}
        shared: dict[Any, Any] = {}
        self.estimates = {}
        bar = tqdm(self.metrics, desc="lightning_fid: metrics", disable=not progress, leave=False)
        for i, metric in enumerate(bar):
            slot = self.slot_of[i]
            try:
                result = metric.compute(reference[slot], fake[slot], self._context(i, shared))
                values.update(self._values(metric, result))
            except Exception as exc:  # a metric never ends a training run: NaN and say why
                if strict:
                    raise
                warn_rank_zero(
                    f"lightning_fid: {metric!r} could not be computed on the generated samples "
                    f"({type(exc).__name__}: {exc}); logging NaN for {list(metric.keys(self.run))}"
                )
                values.update(metric.nan_values(self.run))
                values.update({k + "_se": math.nan for k in self._error_keys(metric)})
                for key in self._error_keys(metric):
                    self.estimates.pop(key, None)
        return values
