"""What reaches the user's loggers: metric values (to ``callback_metrics`` and every logger, at the step
they describe) and a grid of fixed-noise samples (rank 0 only)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image

from lightning_fid.callbacks._history import output_folder
from lightning_fid.engine._files import atomic_write


def log_grid(trainer, grid: torch.Tensor, tag: str, step: int, epoch: int) -> list[str]:
    """Log ``grid`` to TensorBoard / W&B / MLflow loggers, else as a PNG under another logger's log dir;
    without loggers under the trainer's ``default_root_dir`` when it was set, else nowhere.

    Returns what was written, for tests and messages.
    """
    written: list[str] = []
    hwc = grid.permute(1, 2, 0).numpy()
    for logger in trainer.loggers:
        kind = type(logger).__name__
        if kind == "TensorBoardLogger":
            logger.experiment.add_image(tag, grid, global_step=step)
            written.append(f"tensorboard:{tag}")
        elif kind == "WandbLogger":
            logger.log_image(key=tag, images=[hwc], step=step)
            written.append(f"wandb:{tag}")
        elif kind == "MLFlowLogger":
            logger.experiment.log_image(logger.run_id, hwc, f"{tag}/epoch={epoch:04d}-step={step:08d}.png")
            written.append(f"mlflow:{tag}")
        else:
            folder = Path(getattr(logger, "log_dir", None) or trainer.default_root_dir) / "samples"
            written.append(_save_png(hwc, folder, tag, epoch, step))
    if not trainer.loggers:  # logger=False: the trainer's root folder if it was set, never the working directory
        folder = output_folder(trainer)
        if folder is not None:
            written.append(_save_png(hwc, folder / "samples", tag, epoch, step))
    return written


def _save_png(hwc: np.ndarray, folder: Path, tag: str, epoch: int, step: int) -> str:
    """One file per evaluation: named by epoch and step, so step schedules never overwrite a grid."""
    path = folder / f"{tag.replace('/', '_')}_epoch={epoch:04d}-step={step:08d}.png"
    with atomic_write(path, suffix=".png") as tmp:
        Image.fromarray(hwc).save(tmp)
    return str(path)


def log_values(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    values: dict[str, float],
    on_step: bool = False,
    prog_bar: Collection[str] = (),
) -> None:
    """Put ``values`` (already keyed) in ``callback_metrics`` for monitors, and send them to every logger.

    At epoch ends (training or validation) Lightning's own logging does both. From a training batch
    end Lightning forwards values to loggers only every ``log_every_n_steps``, so there rank 0 sends
    them itself, at ``trainer.global_step``: the step they describe. The values are already identical
    on every rank; ``sync_dist`` with ``max`` keeps them exactly so (and tells Lightning they are
    synchronised). Without loggers nothing is sent to one (no "no logger configured" warning).
    """
    # validate / test return what goes to loggers: their values are logged "to loggers" even without one
    standalone = trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING)
    to_loggers = (bool(trainer.loggers) or standalone) and not on_step
    for key, value in values.items():
        pl_module.log(
            key,
            float(value),
            on_step=on_step,
            on_epoch=not on_step,
            sync_dist=True,
            reduce_fx="max",
            logger=to_loggers,
            prog_bar=key in prog_bar,
            batch_size=1,
        )
    if on_step and trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(dict(values), step=trainer.global_step)
