"""One fit as the callback sees it: which weights each evaluation scores, what it recorded, and where."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_fid.callbacks._history import History, restore_state
from lightning_fid.callbacks._weights import scored_weights
from lightning_fid.engine import Evaluator


def evaluate_choices(
    evaluator: Evaluator,
    choices: tuple[str, ...],
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    caller: Callback,
    num_samples: int,
    in_validation: bool = False,
    raw_snapshot: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, float], torch.Tensor | None]:
    """Evaluate each chosen set of weights: the first under the plain keys, a second ("raw" after
    "averaged") as ``<key>_raw``. Once training runs, a failure is NaN with a warning, never an error.
    Returns the values and the first grid."""
    values: dict[str, float] = {}
    first_grid = None
    for position, which in enumerate(choices):
        with scored_weights(which, trainer, pl_module, caller, in_validation, raw_snapshot):
            result, grid = evaluator.evaluate(pl_module, num_samples, strict=False)
        suffix = "_raw" if position > 0 else ""
        values.update({name + suffix: value for name, value in result.items()})
        first_grid = grid if first_grid is None else first_grid
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

    def reset(self) -> None:
        """A new fit (a resumed one gets its state back from the checkpoint after this)."""
        self.history.reset()
        self.best = None
        self.last_evaluated = self.last_step = self.raw_snapshot = self.resumed_reference = None

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
        }

    def load_state_dict(self, state: dict[str, Any], evaluator: Evaluator) -> None:
        """Restore history, best value and the noise seed; conflicts with the constructor warn."""
        identities = [m.identity() for m in evaluator.metrics]
        history, self.best, evaluator.seed = restore_state(state, evaluator.seed, identities, evaluator.num_samples)
        self.history.replace(history)
        self.resumed_reference = state.get("real_key")
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
        self.resumed_reference = None
