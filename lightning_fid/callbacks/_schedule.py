"""When evaluations happen, and the before-training check that the schedule fires as asked.

Epoch cadence follows Lightning's convention: epoch ``e`` is due when ``(e + 1) % every_n_epochs == 0``
(as ``check_val_every_n_epoch`` and ``ModelCheckpoint(every_n_epochs=...)``). A due epoch is
evaluated at its validation runs when the module validates, and otherwise (no ``validation_step``,
or no validation in that epoch) at its training epoch end, so every due epoch gets an evaluation.
Step cadence evaluates at the end of the training batch where ``trainer.global_step`` reaches a
multiple of ``every_n_steps``, independently of validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn


@dataclass(frozen=True)
class Cadence:
    """Evaluate every ``every_n_epochs`` epochs or every ``every_n_steps`` global steps (one is None)."""

    every_n_epochs: int | None = 1
    every_n_steps: int | None = None

    def __post_init__(self) -> None:
        if (self.every_n_epochs is None) == (self.every_n_steps is None):
            raise ValueError("set exactly one of every_n_epochs and every_n_steps")
        for name in ("every_n_epochs", "every_n_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def by_steps(self) -> bool:
        """True for step cadence."""
        return self.every_n_steps is not None

    def epoch_due(self, epoch: int) -> bool:
        """Epoch cadence: whether epoch ``epoch`` gets an evaluation."""
        return not self.by_steps and (epoch + 1) % self.every_n_epochs == 0

    def step_due(self, global_step: int, last_step: int | None) -> bool:
        """Step cadence: whether a multiple of ``every_n_steps`` was reached since ``last_step``
        (with several optimizers the global step may jump over the multiple itself)."""
        if not self.by_steps or global_step <= 0:
            return False
        previous = 0 if last_step is None else last_step // self.every_n_steps
        return global_step // self.every_n_steps > previous and global_step != last_step


def _steps_per_epoch(trainer: pl.Trainer) -> float:
    batches = trainer.num_training_batches
    return math.ceil(batches / max(1, trainer.accumulate_grad_batches)) if math.isfinite(batches) else math.inf


def check_schedule(cadence: Cadence, trainer: pl.Trainer, validates: bool) -> None:
    """Raise if the schedule can never fire; warn if it fires far less often than asked.

    Call once the training data is known (``on_train_start``), before the first step.
    """
    max_steps = trainer.max_steps if trainer.max_steps not in (None, -1) else math.inf
    max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else math.inf
    per_epoch = _steps_per_epoch(trainer)
    total_steps = min(max_steps, max_epochs * per_epoch)
    if cadence.by_steps:
        if cadence.every_n_steps > total_steps:
            rank_zero_warn(
                f"GenerativeMetrics(every_n_steps={cadence.every_n_steps}) never fires: training stops after "
                f"{total_steps:g} optimizer steps; lower every_n_steps"
            )
        return
    if math.isinf(per_epoch):
        validates_by_steps = validates and isinstance(trainer.val_check_interval, int)
        if not validates_by_steps or cadence.every_n_epochs > 1:
            raise ValueError(
                f"GenerativeMetrics(every_n_epochs={cadence.every_n_epochs}) never fires: the training data has no "
                "length, so the epoch never ends; set GenerativeMetrics(every_n_steps=N) instead"
            )
        return
    epochs_run = max_epochs
    if math.isfinite(max_steps) and per_epoch > 0:
        epochs_run = min(max_epochs, math.ceil(max_steps / per_epoch))
    if cadence.every_n_epochs > epochs_run:
        rank_zero_warn(
            f"GenerativeMetrics(every_n_epochs={cadence.every_n_epochs}) never fires: training runs "
            f"{epochs_run:g} epoch(s); lower every_n_epochs or use every_n_steps"
        )
    asked_for_steps = isinstance(trainer.val_check_interval, int) or trainer.val_check_interval != 1.0
    if not validates and asked_for_steps:
        rank_zero_warn(
            f"Trainer(val_check_interval={trainer.val_check_interval}) does not schedule GenerativeMetrics: the "
            "module has no validation_step, so it evaluates at training epoch ends; for evaluations every N steps "
            "set GenerativeMetrics(every_n_steps=N)"
        )
