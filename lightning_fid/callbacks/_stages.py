"""What happens before the callback evaluates, stage by stage: the trainer's loaders as named real
data, the checks of keys and files against sibling callbacks, the preparation, and ``fast_dev_run``,
under which the callback only runs its dry run."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_fid.callbacks._evaluation import final_keys, publish_card
from lightning_fid.callbacks._monitors import check_monitors
from lightning_fid.callbacks._schedule import check_schedule
from lightning_fid.engine import Evaluator


def trainer_loader(trainer: pl.Trainer, pl_module: pl.LightningModule, which: str) -> Any:
    """The trainer's ``train`` / ``val`` loader (its first one when it has several).

    Raises:
        ValueError: no datamodule or module method defines it and Lightning has not set it up yet.
    """
    method = f"{which}_dataloader"
    if trainer.datamodule is not None and is_overridden(method, trainer.datamodule):
        loader = getattr(trainer.datamodule, method)()
    elif is_overridden(method, pl_module):
        loader = getattr(pl_module, method)()
    else:  # loaders handed to fit / validate directly, once Lightning has set them up
        loader = trainer.train_dataloader if which == "train" else trainer.val_dataloaders
        if loader is None:
            raise ValueError(
                f"real={which!r} but neither a datamodule nor the LightningModule defines {method}() (loaders passed "
                f"to trainer.fit are not set up yet when reference statistics are computed): pass the loader "
                f"itself as real=..."
            )
    return loader[0] if isinstance(loader, (list, tuple)) else loader


def prepare(evaluator: Evaluator, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Everything before training: the evaluator's dry run and reference statistics, with the
    trainer's loaders as the named sources ``"train"`` / ``"val"``."""
    named = {which: partial(trainer_loader, trainer, pl_module, which) for which in ("train", "val")}
    evaluator.prepare(pl_module, named=named)


def owned_keys(callback: Callback) -> list[str]:
    """Every key ``callback`` logs: its metric keys (``_raw`` ones included), ``eval_seconds``, final and
    test keys."""
    scored = [k[len(callback.prefix) :] for k in callback.keys()]  # every scored set of weights: ``_raw`` too
    own = callback.keys() + [callback.prefix + "eval_seconds"]
    if callback.final_num_samples is not None:
        own += [callback.prefix + k for k in final_keys(scored, callback.final_seeds)]
    return own + ["test/" + callback.prefix + n for n in scored]


def check_own_keys(callback: Callback) -> None:
    """Refuse a callback that would log one key for two values (``FID(key="fid_raw")`` next to
    ``weights="both"``'s ``fid_raw``, a metric keyed ``final_fid`` next to ``final_num_samples``).

    Raises:
        ValueError: naming the key.
    """
    seen: set[str] = set()
    for key in owned_keys(callback):
        if key in seen:
            raise ValueError(
                f"GenerativeMetrics would log {key!r} twice (a metric's key meets a _raw, final_, "
                "test/ or eval_seconds key): give that metric another key="
            )
        seen.add(key)


def check_siblings(callback: Callback, trainer: pl.Trainer) -> None:
    """Refuse, before anything runs, two GenerativeMetrics on one trainer that would log one key or
    write one history file: every key and file belongs to exactly one callback.

    Raises:
        ValueError: naming the shared keys or file and the option to change (``prefix``).
    """
    mine = set(owned_keys(callback))
    for other in trainer.callbacks:
        if other is callback or type(other) is not type(callback):
            continue
        shared = sorted(mine & set(owned_keys(other)))
        same_file = other.run.history.file_name == callback.run.history.file_name
        if shared or same_file:
            what = f"keys {shared[:6]}" if shared else f"the history file {callback.run.history.file_name}"
            raise ValueError(
                f"two GenerativeMetrics on one trainer (prefix={callback.prefix!r} and prefix={other.prefix!r}) would "
                f"both write {what}: give each its own prefix= made of other letters, e.g. prefix='raw/' and "
                "prefix='ema/'"
            )


def fast_dev_run(trainer: pl.Trainer) -> bool:
    """Whether ``Trainer(fast_dev_run=...)`` is on: then the callback only runs its dry run (as
    Lightning's own callbacks skip their work under it) and says so once."""
    return bool(getattr(trainer, "fast_dev_run", False))


def start_fit(callback: Callback, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Before training, in the order a user pays for them: what the configuration tells (monitors),
    then the dry run; the reference pass waits for the schedule check (:func:`start_training`)."""
    check_monitors(trainer, set(callback.keys()), callback.cadence)
    callback.evaluator.check(pl_module)
    if fast_dev_run(trainer):
        rank_zero_info(
            "GenerativeMetrics: fast_dev_run: the dry run checked sampling, ranges and networks; no "
            "reference pass and no evaluation in this run"
        )


def start_training(callback: Callback, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Once the training data is set up: the schedule check, then the (possibly long) reference pass."""
    if not fast_dev_run(trainer):  # its one or few steps say nothing about the schedule
        check_schedule(callback.cadence, trainer, is_overridden("validation_step", pl_module))
        prepare(callback.evaluator, trainer, pl_module)
        callback.run.check_resumed_reference(callback.evaluator)
        callback.card = publish_card(callback, trainer, callback._resumed_card)
        callback._resumed_card = None


def find_legacy_state(checkpoint: dict, state_key: str, prefix: str) -> dict | None:
    """The callback state a 0.1 checkpoint kept under a key that also named the metrics, or None."""
    states = checkpoint.get("callbacks") or {}
    if state_key in states:
        return None
    marker = f"'prefix': {prefix!r}"
    found = [v for k, v in states.items() if k.startswith("GenerativeMetrics{") and marker in k]
    return found[0] if len(found) == 1 else None
