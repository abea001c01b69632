"""Monitors on our keys never act on a stale value: checked before training, through public routes only.

Lightning keeps the last logged value of a key in ``trainer.callback_metrics``. When metrics are
evaluated less often than a monitor checks (``EarlyStopping``, ``ModelCheckpoint``, a plateau LR
scheduler), the monitor would compare the previous evaluation's value again: patience would count
checks instead of evaluations, and a stale value could be ranked. We never patch the monitors.
Instead:

- the callback uses Lightning's conventions (see :mod:`lightning_fid.callbacks._schedule`): epochs where
  ``(epoch + 1) % every_n_epochs == 0``, as ``check_val_every_n_epoch`` and
  ``ModelCheckpoint(every_n_epochs=...)``; global steps as ``ModelCheckpoint(every_n_train_steps=...)``;
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
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_fid.callbacks._checkpoint import (
    anchor_state,
    check_noise_source,
    latest_estimate,
    load_anchor,
    significant,
)
from lightning_fid.callbacks._pairing import paired_anchor
from lightning_fid.callbacks._schedule import Cadence
from lightning_fid.metrics._jackknife import Estimate
from lightning_fid.metrics.base import check_positive


@dataclass(frozen=True)
class _Check:
    """Moments a monitor reads our key: every ``period`` epochs (``(epoch + 1) % period == 0``) at
    training epoch end or at validation end, or every ``period`` global steps (``by_steps``).
    ``period=None``: at moments no schedule of ours can match (time intervals, per-epoch batch counts)."""

    period: int | None
    at_validation: bool = False
    by_steps: bool = False


def is_fresh(check: _Check, cadence: Cadence) -> bool:
    """Whether every moment of ``check`` comes right after an evaluation."""
    if cadence.by_steps:
        return check.by_steps and check.period is not None and check.period % cadence.every_n_steps == 0
    if check.by_steps or (check.period is None and not check.at_validation):
        return False
    n = cadence.every_n_epochs
    if check.at_validation and n == 1:
        return True  # every validation belongs to a due epoch and evaluates
    return check.period is not None and check.period % n == 0  # every due epoch is evaluated by its end


def _checks(monitor: Callback, trainer: pl.Trainer) -> list[_Check]:
    """When ``monitor`` reads its key (read-only look at its stored constructor options)."""
    every_val = trainer.check_val_every_n_epoch
    if isinstance(monitor, EarlyStopping):
        on_train_end = getattr(monitor, "_check_on_train_epoch_end", True)
        if on_train_end is None or on_train_end:
            return [_Check(1)]
        return [_Check(every_val, at_validation=True)]
    if isinstance(monitor, ModelCheckpoint):
        if monitor.save_top_k == 0:
            return []
        checks = []
        steps = getattr(monitor, "_every_n_train_steps", 1)
        if steps:
            checks.append(_Check(steps, by_steps=True))
        if getattr(monitor, "_train_time_interval", True):
            checks.append(_Check(None))
        every = getattr(monitor, "_every_n_epochs", 1)
        if every:
            on_train_end = getattr(monitor, "_save_on_train_epoch_end", None)
            if on_train_end is not False and not (on_train_end is None and every_val != 1):
                checks.append(_Check(every))  # saves at training epoch end
            if on_train_end is not True:
                checks.append(_Check(every if every_val is None else math.lcm(every, every_val), at_validation=True))
        return checks
    return []


def _advice(monitor: Callback, cadence: Cadence) -> str:
    if isinstance(monitor, EarlyStopping):
        if cadence.by_steps:
            return "use lightning_fid.FreshEarlyStopping, which checks only after an evaluation"
        n = cadence.every_n_epochs
        return (
            f"validate on the same schedule: Trainer(check_val_every_n_epoch={n}) and "
            f"{type(monitor).__name__}(check_on_train_epoch_end=False); or use lightning_fid.FreshEarlyStopping, "
            "which checks only after an evaluation"
        )
    if cadence.by_steps:
        return (
            f"save by steps on the same schedule: ModelCheckpoint(every_n_train_steps={cadence.every_n_steps}) "
            "(or a multiple), with every_n_epochs and train_time_interval unset"
        )
    return (
        f"save by epochs on the same schedule: ModelCheckpoint(every_n_epochs={cadence.every_n_epochs}) (or a "
        "multiple), with every_n_train_steps and train_time_interval unset"
    )


def _schedule(cadence: Cadence) -> str:
    if cadence.by_steps:
        return f"every_n_steps={cadence.every_n_steps}"
    return f"every_n_epochs={cadence.every_n_epochs}"


def check_monitors(trainer: pl.Trainer, keys: Collection[str], cadence: Cadence) -> None:
    """Raise ValueError, before training, if a monitor on ``keys`` could act on a stale value."""
    problems = []
    for monitor in trainer.callbacks:
        if isinstance(monitor, FreshEarlyStopping) or getattr(monitor, "monitor", None) not in keys:
            continue
        if not all(is_fresh(check, cadence) for check in _checks(monitor, trainer)):
            problems.append(
                f"{type(monitor).__name__}(monitor={monitor.monitor!r}) would also check between evaluations "
                f"({_schedule(cadence)}, check_val_every_n_epoch={trainer.check_val_every_n_epoch}) and compare a "
                f"stale value; {_advice(monitor, cadence)}"
            )
    for config in trainer.lr_scheduler_configs:
        if not config.reduce_on_plateau or config.monitor not in keys:
            continue
        period = config.frequency if config.interval == "epoch" else None
        if not is_fresh(_Check(period), cadence):
            advice = (
                "plateau schedulers step by epochs or by batches within an epoch, which every_n_steps cannot match; "
                "evaluate with every_n_epochs"
                if cadence.by_steps
                else f"use 'interval': 'epoch' and a 'frequency' that is a multiple of {cadence.every_n_epochs}"
            )
            problems.append(
                f"the LR scheduler monitoring {config.monitor!r} (interval={config.interval!r}, frequency="
                f"{config.frequency}) would step on stale values; {advice}"
            )
    if problems:
        raise ValueError("GenerativeMetrics: " + "; ".join(problems))


class FreshEarlyStopping(EarlyStopping):
    """``EarlyStopping`` that checks a key logged by :class:`~lightning_fid.GenerativeMetrics` exactly
    once per evaluation, at the first hook after it, so ``patience`` counts evaluations.

    It checks after a step-schedule evaluation (at the end of that training batch, with or without
    validation, endless data included), after an epoch-schedule one (at that epoch's validation or
    training end), whatever the order of the callbacks. Every argument is ``EarlyStopping``'s. For a
    key no GenerativeMetrics logs it behaves exactly like ``EarlyStopping``.

    With ``noise_aware=True`` an evaluation counts as an improvement only when it beats the last
    improvement by more than ``z`` paired standard errors (and ``min_delta``): patience then runs out
    on a plateau instead of being reset by lucky draws of the noise (see
    :mod:`lightning_fid.callbacks._checkpoint`). The monitored key must have error bars.

    Args:
        noise_aware: decide on paired standard errors (off: exactly ``EarlyStopping``'s comparison).
        z: how many paired standard errors an improvement must exceed under ``noise_aware``.

    Raises:
        ValueError: ``z`` not positive, a ``stopping_threshold`` / ``divergence_threshold`` with
            ``noise_aware``, or (before training) a noise-aware monitor on a key without error bars.
    """

    def __init__(self, *args: Any, noise_aware: bool = False, z: float = 2.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._checked: tuple[int, int] | None = None  # the (epoch, step) of the last evaluation checked
        self.noise_aware = bool(noise_aware)
        self.z = check_positive(z, "FreshEarlyStopping z")
        if self.noise_aware and (self.stopping_threshold is not None or self.divergence_threshold is not None):
            raise ValueError("FreshEarlyStopping(noise_aware=True) decides on patience only: drop the thresholds")
        self._anchor: Estimate | None = None  # the last evaluation that counted as an improvement

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.noise_aware and stage == "fit":
            check_noise_source("FreshEarlyStopping(noise_aware=True)", self.monitor, trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "anchor": anchor_state(self._anchor)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._anchor = load_anchor(state_dict.get("anchor"))

    def _noise_aware_check(self, trainer: pl.Trainer) -> None:
        """Patience counts evaluations without a significant improvement over the anchor."""
        _, estimate = latest_estimate(self.monitor, trainer)
        if estimate is None:
            return
        self._anchor = paired_anchor(self._anchor, estimate, "FreshEarlyStopping")
        if significant(estimate, self._anchor, self.mode, self.z, self.min_delta):
            self._anchor, self.wait_count = estimate, 0
            self.best_score = torch.tensor(estimate.value)
            stop = False
        else:
            self.wait_count += 1
            stop = self.wait_count >= self.patience
        stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        trainer.should_stop = trainer.should_stop or stop
        if stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = (
                f"{self.monitor} did not improve by more than {self.z} paired standard errors in the last "
                f"{self.wait_count} evaluations; best {self.best_score:.4g}"
            )
            if self.verbose:
                rank_zero_info(self.stopping_reason_message)

    def _source(self, trainer: pl.Trainer) -> Callback | None:
        for callback in trainer.callbacks:
            keys = getattr(callback, "keys", None)
            if callable(keys) and self.monitor in keys() and hasattr(callback, "run"):
                return callback
        return None

    def _check_new_evaluation(self, trainer: pl.Trainer) -> None:
        last = self._source(trainer).run.last_evaluated
        if last is None or last == self._checked or self._should_skip_check(trainer):
            return
        self._checked = last
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not bool(torch.isfinite(torch.as_tensor(value))):
            # a failed evaluation (NaN, with a warning naming why) is not a reason to stop training
            rank_zero_warn(
                f"FreshEarlyStopping: {self.monitor} is not finite at step {last[1]}; this evaluation "
                "does not count towards patience"
            )
            return
        if self.noise_aware:
            self._noise_aware_check(trainer)
            return
        # EarlyStopping's own check (a method of the class we extend, not patched): compares the value
        # just logged and counts patience
        self._run_early_stopping_check(trainer)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._source(trainer) is not None:
            self._check_new_evaluation(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._source(trainer) is None:
            super().on_train_epoch_end(trainer, pl_module)
        else:
            self._check_new_evaluation(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._source(trainer) is None:
            super().on_validation_end(trainer, pl_module)
        else:
            self._check_new_evaluation(trainer)
