"""Score the weights the user means: raw, or those of Lightning's ``WeightAveraging`` (e.g. EMA).

Lightning's ``WeightAveraging`` keeps the averaged model to itself and swaps its values into the
LightningModule for validation (between its ``on_validation_epoch_start`` and ``_end`` hooks). We
read the averaged values through its documented ``on_save_checkpoint`` contract (it places the
average model's state in ``checkpoint["state_dict"]`` and the averaging state, with ``n_averaged``,
in ``checkpoint["averaging_state"]``), and we know from the callback order whether its swap is in
effect when we evaluate. So the scored weights do not depend on the order of callbacks or on
whether the module validates; the module's own weights are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

try:  # Lightning >= 2.5
    from lightning.pytorch.callbacks import WeightAveraging
except ImportError:  # pragma: no cover - older Lightning: no averaging callback to honour
    WeightAveraging = None  # type: ignore[assignment,misc]

WeightsChoice = Literal["auto", "raw", "averaged", "both"]
CHOICES = ("auto", "raw", "averaged", "both")


def check_choice(weights: Any) -> WeightsChoice:
    """``weights`` if it is one of :data:`CHOICES`.

    Raises:
        ValueError: naming the choices.
    """
    if weights not in CHOICES:
        raise ValueError(f"weights={weights!r}; choose from {CHOICES}")
    return weights


def find_averaging(trainer: pl.Trainer) -> Callback | None:
    """The trainer's ``WeightAveraging`` callback, if any (at most one is meaningful)."""
    if WeightAveraging is None:
        return None
    found = [cb for cb in trainer.callbacks if isinstance(cb, WeightAveraging)]
    if len(found) > 1:
        raise ValueError(
            f"{len(found)} WeightAveraging callbacks: GenerativeMetrics cannot tell which weights to score"
        )
    return found[0] if found else None


def resolve_choice(weights: WeightsChoice, trainer: pl.Trainer, fitting: bool = True) -> tuple[str, ...]:
    """Which weights each evaluation scores, in logging order: ("averaged",), ("raw",) or both.

    Outside ``fit`` (validate / test) only the module's current weights exist: after a fit with
    WeightAveraging they are the average, which Lightning copied into the module at its end.
    """
    if weights not in CHOICES:
        raise ValueError(f"weights={weights!r}; choose from {CHOICES}")
    present = find_averaging(trainer) is not None
    if not fitting:
        if present and weights in ("raw", "both"):
            rank_zero_warn(
                f"GenerativeMetrics(weights={weights!r}): outside fit only the module's current weights "
                "exist (the average, after a fit with WeightAveraging); scoring those, under the plain keys"
            )
        return ("current",)
    if weights in ("averaged", "both") and not present:
        raise ValueError(
            f"weights={weights!r} needs a WeightAveraging callback (e.g. EMAWeightAveraging) on the trainer"
        )
    if weights == "auto":
        return ("averaged",) if present else ("raw",)
    return ("averaged", "raw") if weights == "both" else (weights,)


def _averaged_state(averaging: Callback, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    checkpoint: dict[str, Any] = {"state_dict": None}
    averaging.on_save_checkpoint(trainer, pl_module, checkpoint)
    return checkpoint


@contextmanager
def _loaded(pl_module: pl.LightningModule, state: dict[str, torch.Tensor]) -> Iterator[None]:
    own = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
    pl_module.load_state_dict(state)
    try:
        yield
    finally:
        pl_module.load_state_dict(own)


@contextmanager
def scored_weights(
    which: str,
    trainer: pl.Trainer | None,
    pl_module: pl.LightningModule,
    caller: Callback,
    in_validation: bool,
    raw_snapshot: dict[str, torch.Tensor] | None = None,
) -> Iterator[str]:
    """Put the ``which`` ("raw" / "averaged") weights into ``pl_module`` for the duration; yield what
    is really scored ("raw" when no average exists yet, with a warning). ``raw_snapshot`` holds the
    raw weights when the average has already replaced them (see :func:`raw_snapshot_needed`)."""
    averaging = find_averaging(trainer) if trainer is not None else None
    if averaging is None or which == "current":
        yield which
        return
    if raw_snapshot is not None and which == "raw":
        with _loaded(pl_module, raw_snapshot):
            yield "raw"
        return
    checkpoint = _averaged_state(averaging, trainer, pl_module)
    if "averaging_state" not in checkpoint:  # no average model (outside fit)
        if which == "averaged":
            rank_zero_warn("GenerativeMetrics: no averaged weights exist outside fit; scoring the raw weights")
        yield "raw"
        return
    updates = int(checkpoint["averaging_state"].get("n_averaged", torch.tensor(1)))
    # WeightAveraging swaps the average in for validation and back at its on_validation_epoch_end:
    # inside a validation epoch end, the swap is in effect if it comes after us in the callback list.
    callbacks = trainer.callbacks
    swapped = in_validation and callbacks.index(averaging) > callbacks.index(caller)
    in_module = "averaged" if swapped else "raw"
    if which == "averaged" and updates == 0:
        rank_zero_warn(
            "GenerativeMetrics: the weight average has not been updated yet; this evaluation scores the raw weights"
        )
        which = "raw"
    if which == in_module:
        yield which
        return
    with _loaded(pl_module, checkpoint["state_dict"]):
        yield which


def raw_snapshot_needed(choices: tuple[str, ...], trainer: pl.Trainer, caller: Callback) -> bool:
    """True when the raw weights will be gone at ``on_train_end``: WeightAveraging copies the average
    into the module in its own ``on_train_end``, which runs before ours if it is listed first."""
    averaging = find_averaging(trainer)
    if averaging is None or "raw" not in choices:
        return False
    return trainer.callbacks.index(averaging) < trainer.callbacks.index(caller)
