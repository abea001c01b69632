"""One fit as the callback sees it: which weights each evaluation scores, what it recorded, and where.

Paired comparisons (error bars on): for each key with a standard error, the run keeps the replicates
of that key's best evaluation so far (G floats, also in the checkpoint). Every later scheduled
evaluation logs ``<key>_vs_best`` (its value minus the best one) and ``<key>_vs_best_se``, the
jackknife standard error of that difference from the paired replicates: the same sample indices draw
the same noise, so most of the sampling noise cancels in the difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from lightning_fid.callbacks._history import History, restore_state
from lightning_fid.callbacks._pairing import paired_anchor
from lightning_fid.callbacks._weights import scored_weights
from lightning_fid.engine import Evaluator
from lightning_fid.metrics._jackknife import Estimate

Paired = dict[str, tuple[bool, str, str]]  # logged key -> (higher is better, metric key, "" or "_raw")


def error_directions(evaluator: Evaluator, choices: tuple[str, ...] = ("raw",)) -> Paired:
    """The keys (before the prefix) with error bars under ``choices``: for each, whether higher is
    better, the metric's key and the ``_raw`` suffix of the second weights, if any."""
    suffixes = [""] + (["_raw"] if len(choices) > 1 else [])
    return {k + s: (higher, k, s) for k, higher in evaluator.scorer.error_keys().items() for s in suffixes}


def paired_keys(evaluator: Evaluator, choices: tuple[str, ...] = ("raw",)) -> list[str]:
    """The paired-comparison keys (before the prefix) a scheduled evaluation logs once a best exists:
    ``<key>_vs_best`` and ``<key>_vs_best_se`` (``_raw`` appended for the raw weights, as every key)."""
    pairs = error_directions(evaluator, choices).values()
    return [key + name + suffix for _, key, suffix in pairs for name in ("_vs_best", "_vs_best_se")]


def evaluate_choices(
    evaluator: Evaluator,
    choices: tuple[str, ...],
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    caller: Callback,
    num_samples: int,
    in_validation: bool = False,
    raw_snapshot: dict[str, torch.Tensor] | None = None,
    paired: bool = False,
) -> tuple[dict[str, float], torch.Tensor | None]:
    """Evaluate each chosen set of weights: the first under the plain keys, a second ("raw" after
    "averaged") as ``<key>_raw``. Once training runs, a failure is NaN with a warning, never an error.
    Returns the values and the first grid. ``paired`` (a scheduled evaluation of the fit, which
    ``caller.run.record`` then records) adds the paired comparisons with the best evaluation so far (see
    the module docstring)."""
    values: dict[str, float] = {}
    estimates: dict[str, Estimate] = {}
    first_grid = None
    for position, which in enumerate(choices):
        with scored_weights(which, trainer, pl_module, caller, in_validation, raw_snapshot):
            result, grid = evaluator.evaluate(pl_module, num_samples, strict=False)
        suffix = "_raw" if position > 0 else ""
        values.update({name + suffix: value for name, value in result.items()})
        estimates.update({name + suffix: e for name, e in evaluator.scorer.estimates.items()})
        first_grid = grid if first_grid is None else first_grid
    if paired and trainer.state.fn == TrainerFn.FITTING and num_samples == evaluator.num_samples:
        values.update(caller.run.compare(estimates, error_directions(evaluator, choices)))
    return values, first_grid


@dataclass
class RunState:
    """A callback's record of the current fit: every evaluation, the best main value, when it last
    evaluated, and the raw weights kept for a final evaluation after the average replaced them."""

    history: History
    best: float | None = None
    last_evaluated: tuple[int, int] | None = None  # (epoch, global step)
    last_step: int | None = None
    raw_snapshot: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    resumed_reference: str | None = None  # the reference key a resumed checkpoint was scored against
    best_estimates: dict[str, Estimate] = field(default_factory=dict)  # each error key's best evaluation
    estimates: dict[str, Estimate] = field(default_factory=dict)  # the last recorded evaluation's
    _pending: tuple[dict[str, Estimate], dict[str, bool]] = field(default=({}, {}), repr=False)

    def reset(self) -> None:
        """A new fit (a resumed one gets its state back from the checkpoint after this)."""
        self.history.reset()
        self.best = None
        self.last_evaluated = self.last_step = self.raw_snapshot = self.resumed_reference = None
        self.best_estimates, self.estimates, self._pending = {}, {}, ({}, {})

    def compare(self, estimates: dict[str, Estimate], directions: Paired) -> dict[str, float]:
        """``<key>_vs_best`` and ``<key>_vs_best_se`` of a scheduled evaluation against each key's best
        so far (none before the first; NaN for a key this evaluation has no value for). The estimates
        become the best ones, key by key, when :meth:`record` records the evaluation."""
        self._pending = (estimates, {k: higher for k, (higher, _, _) in directions.items()})
        out: dict[str, float] = {}
        for name, (_, key, suffix) in directions.items():
            best = self.best_estimates.get(name)
            if best is not None and name in estimates:
                best = paired_anchor(best, estimates[name], f"GenerativeMetrics' {key + suffix}_vs_best")
                if best is None:  # another number of groups or samples: this evaluation starts afresh
                    del self.best_estimates[name]
            if best is None:
                continue
            diff = estimates[name].minus(best) if name in estimates else None
            out[key + "_vs_best" + suffix] = diff.value if diff is not None else math.nan
            out[key + "_vs_best_se" + suffix] = diff.se if diff is not None else math.nan
        return out

    def record(self, trainer: pl.Trainer, values: dict[str, Any], main: str | None, higher_is_better: bool) -> None:
        """Record one evaluation (rank 0 writes the history file) and update ``best`` from ``values[main]``."""
        self.last_evaluated = (trainer.current_epoch, trainer.global_step)
        self.last_step = trainer.global_step
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **values}, trainer)
        value = values.get(main, math.nan) if main is not None else math.nan
        if not math.isnan(value) and (
            self.best is None or (value > self.best if higher_is_better else value < self.best)
        ):
            self.best = value
        estimates, directions = self._pending
        self._pending = ({}, {})
        self.estimates = estimates
        for key, estimate in estimates.items():
            best = self.best_estimates.get(key)
            if math.isfinite(estimate.value) and (
                best is None or (estimate.value > best.value if directions.get(key) else estimate.value < best.value)
            ):
                self.best_estimates[key] = estimate

    def finish(self, final: dict[str, float], trainer: pl.Trainer) -> None:
        """Record the end-of-fit values and send them to every logger (rank 0)."""
        self.raw_snapshot = None
        self.history.set_final(final, trainer)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(final, step=trainer.global_step)

    def state_dict(self, evaluator: Evaluator) -> dict[str, Any]:
        """What a checkpoint keeps: history, best value, noise seed, sample count, metric identities."""
        return {
            "history": self.history.entries,
            "best": self.best,
            "seed": evaluator.seed,
            "num_samples": evaluator.num_samples,
            "metrics": [m.identity() for m in evaluator.metrics],
            "real_key": evaluator.reference.key if evaluator.reference is not None else None,
            "run_id": self.history.run_id,
            "best_estimates": {key: e.state() for key, e in self.best_estimates.items()},
        }

    def load_state_dict(self, state: dict[str, Any], evaluator: Evaluator) -> None:
        """Restore history, best value and the noise seed; conflicts with the constructor warn."""
        identities = [m.identity() for m in evaluator.metrics]
        history, self.best, evaluator.seed = restore_state(state, evaluator.seed, identities, evaluator.num_samples)
        self.history.replace(history)
        self.resumed_reference = state.get("real_key")
        same = state.get("num_samples") == evaluator.num_samples and state.get("metrics") == identities
        saved = state.get("best_estimates") or {}
        try:  # paired with the same sample indices and metrics only; a state without them starts afresh
            self.best_estimates = {k: Estimate.from_state(v) for k, v in saved.items()} if same else {}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"GenerativeMetrics checkpoint state: corrupt 'best_estimates' ({exc})") from None
        if isinstance(state.get("run_id"), str):  # the same run continues: the same history file
            self.history.run_id = state["run_id"]

    def check_resumed_reference(self, evaluator: Evaluator) -> None:
        """After a resume, once the reference is resolved: another reference (other real data, reading or
        networks) makes values before and after incomparable: say so, and ``best`` starts afresh."""
        old, new = self.resumed_reference, evaluator.reference.key if evaluator.reference is not None else None
        if old and new and (old.startswith("uncached") or new.startswith("uncached")):
            rank_zero_warn(
                "GenerativeMetrics: resuming without a cached reference (use_cache=False, or a reading "
                "with no stable identity): whether the checkpoint's evaluations used the same real data, "
                "reading and networks cannot be told; values before and after compare only if they did"
            )
        elif old and new and old != new:
            rank_zero_warn(
                "GenerativeMetrics: the checkpoint's evaluations were scored against another reference "
                "(other real data, reading or networks): values before and after the resume are not "
                "comparable; the best value starts afresh"
            )
            self.best = None
            self.best_estimates = {}
        self.resumed_reference = None
