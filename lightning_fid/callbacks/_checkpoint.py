"""Decisions that respect the noise of a sampled metric: an evaluation is an improvement only when it
beats the reference evaluation by more than ``z`` paired standard errors.

Both evaluations score the same fixed noise, so the difference of their jackknife replicates gives
the standard error of the *difference* (:meth:`~lightning_fid.metrics._jackknife.Estimate.minus`),
much smaller than either value's own. The reference (the *anchor*) is the last evaluation that counted
as an improvement, not the best value seen: a lucky draw does not raise the bar, and a slow but steady
improvement is recognised once it adds up to ``z`` standard errors. Used by
:class:`~lightning_fid.FreshEarlyStopping` (``noise_aware=True``) and :class:`NoiseAwareCheckpoint`.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from typing_extensions import override

from lightning_fid.callbacks._pairing import paired_anchor
from lightning_fid.callbacks._run import error_directions
from lightning_fid.metrics._jackknife import Estimate
from lightning_fid.metrics.base import check_positive


def metrics_source(monitor: str, trainer: pl.Trainer) -> Callback | None:
    """The :class:`~lightning_fid.GenerativeMetrics` on ``trainer`` that logs ``monitor``, if any."""
    for callback in trainer.callbacks:
        keys = getattr(callback, "keys", None)
        if callable(keys) and monitor in keys() and hasattr(callback, "run"):
            return callback
    return None


def check_noise_source(owner: str, monitor: str | None, trainer: pl.Trainer) -> None:
    """Refuse, before training, a noise-aware decision on a key without error bars.

    Raises:
        ValueError: naming the option to change.
    """
    source = metrics_source(monitor or "", trainer)
    keys = [] if source is None else [source.prefix + k for k in error_directions(source.evaluator, ("raw", "raw"))]
    if monitor not in keys:
        raise ValueError(
            f"{owner} monitors {monitor!r}, which has no standard error: a noise-aware decision needs a key of a "
            f"GenerativeMetrics with error_bars=True (here: {keys or 'none'}); monitor one of them or use the "
            "plain decision (noise_aware=False / ModelCheckpoint)"
        )


def latest_estimate(monitor: str, trainer: pl.Trainer) -> tuple[tuple[int, int] | None, Estimate | None]:
    """The (epoch, step) of the last recorded evaluation and its estimate of ``monitor``."""
    source = metrics_source(monitor, trainer)
    if source is None:
        return None, None
    key = monitor[len(source.prefix) :]
    return source.run.last_evaluated, source.run.estimates.get(key)


def significant(estimate: Estimate, anchor: Estimate | None, mode: str, z: float, min_delta: float = 0.0) -> bool:
    """Whether ``estimate`` beats ``anchor`` (in direction ``mode``) by more than ``z`` paired standard
    errors and more than ``min_delta``; always True without an anchor. A difference whose standard
    error cannot be computed (NaN) is not significant."""
    if anchor is None:
        return True
    diff = estimate.minus(anchor)
    gain = -diff.value if mode == "min" else diff.value
    se = diff.se
    return not math.isnan(se) and gain > max(z * se, abs(min_delta))


def anchor_state(anchor: Estimate | None) -> dict[str, Any] | None:
    """The anchor as plain numbers for a checkpoint."""
    return None if anchor is None else anchor.state()


def load_anchor(state: Any) -> Estimate | None:
    """The inverse of :func:`anchor_state` (None for a checkpoint without one)."""
    return None if not state else Estimate.from_state(state)


class NoiseAwareCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps the best evaluation of a :class:`~lightning_fid.GenerativeMetrics`
    key, where a new evaluation replaces the kept checkpoint only when it is better by more than ``z``
    paired standard errors (``<key>_vs_best``-style differences against the kept evaluation).

    A plain ``ModelCheckpoint(save_top_k=1)`` on FID keeps whichever evaluation drew the luckiest noise
    once training has plateaued; this one keeps the earliest evaluation that no later one beat
    significantly. Every argument besides ``z`` is ``ModelCheckpoint``'s; ``monitor`` must be a key with
    error bars and ``save_top_k`` must be 1 (one kept evaluation, one comparison). Only public hooks are
    used: it decides in ``check_monitor_top_k``, which ``ModelCheckpoint`` asks before saving. The
    schedule must match the evaluations' (checked before training, as for every monitor on our keys).

    Args:
        z: how many paired standard errors an improvement must exceed (2: about 2-4 % false
            improvements per evaluation on a plateau, with the SE's own 9 degrees of freedom).

    Raises:
        ValueError: no ``monitor``, ``save_top_k`` other than 1, or ``z`` not positive; before training,
            a monitored key without error bars.
    """

    def __init__(self, *args: Any, z: float = 2.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.monitor is None:
            raise ValueError("NoiseAwareCheckpoint needs monitor=<a GenerativeMetrics key with error bars>")
        if self.save_top_k != 1:
            raise ValueError(f"NoiseAwareCheckpoint keeps one evaluation: use save_top_k=1, got {self.save_top_k}")
        self.z = check_positive(z, "NoiseAwareCheckpoint z")
        self._anchor: Estimate | None = None
        self._decided: tuple[int, int] | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            check_noise_source("NoiseAwareCheckpoint", self.monitor, trainer)

    @override
    def check_monitor_top_k(self, trainer: pl.Trainer, current: torch.Tensor | None = None) -> bool:
        """Save only an evaluation that beats the kept one by more than ``z`` paired standard errors."""
        when, estimate = latest_estimate(self.monitor, trainer)
        if current is None or estimate is None or when == self._decided or not math.isfinite(estimate.value):
            return False
        self._decided = when
        self._anchor = paired_anchor(self._anchor, estimate, "NoiseAwareCheckpoint")
        better = trainer.strategy.reduce_boolean_decision(significant(estimate, self._anchor, self.mode, self.z))
        if better:
            self._anchor = estimate
        return bool(better)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "anchor": anchor_state(self._anchor)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._anchor = load_anchor(state_dict.get("anchor"))
