"""Send a grid of fixed-noise samples to every configured logger (rank 0 only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from lightning_fid.files import atomic_write


def image_grid(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (K, 3, H, W) -> uint8 (3, H', W') grid."""
    nrow = max(1, int(np.ceil(np.sqrt(images_uint8.shape[0]))))
    return make_grid(images_uint8.cpu(), nrow=nrow, padding=2)


def log_grid(trainer, grid: torch.Tensor, tag: str, step: int, epoch: int) -> list[str]:
    """Log ``grid`` to TensorBoard / W&B / MLflow loggers, else as a PNG under a log dir.

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
            logger.experiment.log_image(logger.run_id, hwc, f"{tag}/epoch={epoch:04d}.png")
            written.append(f"mlflow:{tag}")
        else:
            folder = Path(getattr(logger, "log_dir", None) or trainer.default_root_dir) / "samples"
            written.append(_save_png(hwc, folder, tag, epoch))
    if not trainer.loggers:
        written.append(_save_png(hwc, Path(trainer.default_root_dir) / "samples", tag, epoch))
    return written


def _save_png(hwc: np.ndarray, folder: Path, tag: str, epoch: int) -> str:
    path = folder / f"{tag.replace('/', '_')}_epoch={epoch:04d}.png"
    with atomic_write(path, suffix=".png") as tmp:
        Image.fromarray(hwc).save(tmp)
    return str(path)
