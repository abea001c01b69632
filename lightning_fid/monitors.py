"""Monitors on our keys never act on a stale value: checked before training, through public routes only.

Lightning keeps the last logged value of a key in ``trainer.callback_metrics``. When metrics are
evaluated less often than a monitor checks (``EarlyStopping``, ``ModelCheckpoint``, a plateau LR
scheduler), the monitor would compare the previous evaluation's value again: patience would count
checks instead of evaluations, and a stale value could be ranked. We never patch the monitors.
Instead:

- the callback uses Lightning's epoch convention (evaluate where ``(epoch + 1) % every_n_epochs == 0``,
  as ``check_val_every_n_epoch`` and ``ModelCheckpoint(every_n_epochs=...)`` do), so matching
  options line up;
- :func:`check_monitors` runs in ``on_fit_start`` and raises, naming the option to set, when a
  monitor on our keys could check at a moment without a fresh evaluation;
- :class:`FreshEarlyStopping` is an opt-in ``EarlyStopping`` that checks only right after an
  evaluation (patience then counts evaluations), for validation every epoch and FID less often.

Lightning exposes a monitor's schedule only as constructor arguments; :func:`_checks` reads those
stored options (it never writes them). An option it cannot find reads as "checks at every chance",
so a future Lightning can cause an unneeded error, never a stale comparison.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from typing_extensions import override


@dataclass(frozen=True)
class Cadence:
    """When evaluations happen: at epochs with ``(epoch + 1) % every_n_epochs == 0``, either at those
    epochs' validation runs (``on_validation``) or at their training epoch end."""

    every_n_epochs: int
    on_validation: bool


@dataclass(frozen=True)
class _Check:
    """A moment a monitor reads our key: at epochs with ``(epoch + 1) % period == 0`` (None: at step
    or time boundaries, which no epoch schedule can match), at validation end or train epoch end."""

    period: int | None
    at_validation: bool


def _evaluation_period(cadence: Cadence, trainer: pl.Trainer) -> int | None:
    """Period in epochs of the evaluations, or None when validation runs by steps (no epoch period)."""
    if not cadence.on_validation:
        return cadence.every_n_epochs
    every = trainer.check_val_every_n_epoch
    return None if every is None else math.lcm(cadence.every_n_epochs, every)


def is_fresh(check: _Check, cadence: Cadence, trainer: pl.Trainer) -> bool:
    """Whether every moment of ``check`` comes right after an evaluation."""
    if check.at_validation:
        # Without validation_step there is no validation run, so a validation-end check never fires;
        # with it, every validation in an epoch we evaluate is an evaluation.
        if not cadence.on_validation or cadence.every_n_epochs == 1:
            return True
        return check.period is not None and check.period % cadence.every_n_epochs == 0
    if check.period is None:
        return False
    period = _evaluation_period(cadence, trainer)
    return period is not None and check.period % period == 0


def _checks(monitor: Callback, trainer: pl.Trainer) -> list[_Check]:
    """When ``monitor`` reads its key (read-only look at its stored constructor options)."""
    every_val = trainer.check_val_every_n_epoch
    if isinstance(monitor, EarlyStopping):
        on_train_end = getattr(monitor, "_check_on_train_epoch_end", True)
        if on_train_end is None or on_train_end:
            return [_Check(1, at_validation=False)]
        return [_Check(every_val, at_validation=True)]
    if isinstance(monitor, ModelCheckpoint):
        if monitor.save_top_k == 0:
            return []
        checks = []
        if getattr(monitor, "_every_n_train_steps", 1) or getattr(monitor, "_train_time_interval", True):
            checks.append(_Check(None, at_validation=False))
        every = getattr(monitor, "_every_n_epochs", 1)
        if every:  # it may save at train epoch end or at validation end: both must be fresh
            checks.append(_Check(every, at_validation=False))
            checks.append(_Check(every if every_val is None else math.lcm(every, every_val), at_validation=True))
        return checks
    return []


def _advice(monitor: Callback, cadence: Cadence) -> str:
    n = cadence.every_n_epochs
    name = type(monitor).__name__
    if isinstance(monitor, EarlyStopping):
        return (
            f"evaluate at every validation and validate every {n} epoch(s): GenerativeMetrics(every_n_epochs=1), "
            f"Trainer(check_val_every_n_epoch={n}) and {name}(check_on_train_epoch_end=False); or use "
            f"lightning_fid.FreshEarlyStopping, which checks only after an evaluation"
        )
    return (
        f"save by epochs on the same schedule: ModelCheckpoint(every_n_epochs={n}) (or a multiple), with "
        "every_n_train_steps and train_time_interval unset"
    )


def check_monitors(trainer: pl.Trainer, keys: Collection[str], cadence: Cadence) -> None:
    """Raise ValueError, before training, if a monitor on ``keys`` could act on a stale value."""
    problems = []
    for monitor in trainer.callbacks:
        if isinstance(monitor, FreshEarlyStopping) or getattr(monitor, "monitor", None) not in keys:
            continue
        if not all(is_fresh(check, cadence, trainer) for check in _checks(monitor, trainer)):
            problems.append(
                f"{type(monitor).__name__}(monitor={monitor.monitor!r}) would also check between evaluations "
                f"(every_n_epochs={cadence.every_n_epochs}, check_val_every_n_epoch="
                f"{trainer.check_val_every_n_epoch}) and compare a stale value; {_advice(monitor, cadence)}"
            )
    for config in trainer.lr_scheduler_configs:
        if not config.reduce_on_plateau or config.monitor not in keys:
            continue
        period = config.frequency if config.interval == "epoch" else None
        if not is_fresh(_Check(period, at_validation=False), cadence, trainer):
            problems.append(
                f"the LR scheduler monitoring {config.monitor!r} (interval={config.interval!r}, frequency="
                f"{config.frequency}) would step on stale values; return it from configure_optimizers with "
                f"'interval': 'epoch' and 'frequency' a multiple of {_evaluation_period(cadence, trainer) or 'the'}"
                " evaluation period"
            )
    if problems:
        raise ValueError("GenerativeMetrics: " + "; ".join(problems))


class FreshEarlyStopping(EarlyStopping):
    """``EarlyStopping`` that checks a key logged by :class:`~lightning_fid.GenerativeMetrics` only
    right after that callback evaluated, so ``patience`` counts evaluations.

    Use it when validation runs more often than the metrics (``every_n_epochs > 1``). Every argument
    is ``EarlyStopping``'s. For a key no GenerativeMetrics logs it behaves exactly like EarlyStopping.
    """

    def _fresh(self, trainer: pl.Trainer) -> bool:
        for callback in trainer.callbacks:
            keys = getattr(callback, "keys", None)
            if callable(keys) and self.monitor in keys() and hasattr(callback, "evaluated_now"):
                return callback.evaluated_now(trainer)
        return True

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fresh(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fresh(trainer):
            super().on_validation_end(trainer, pl_module)
