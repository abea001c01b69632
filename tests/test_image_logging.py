"""The sample grid goes to each logger's own image API, or to a PNG when it has none."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from lightning_fid.callbacks._reporting import log_grid
from lightning_fid.engine._images import image_grid


class MLFlowLogger:  # same class name and image API as lightning's MLFlowLogger (mlflow is not installed here)
    run_id = "run-1"

    def __init__(self):
        self.calls = []
        self.experiment = SimpleNamespace(log_image=lambda *a: self.calls.append(a))


class PlainLogger:  # a logger without an image API (like CSVLogger)
    def __init__(self, log_dir):
        self.log_dir = log_dir


def test_grid_layout():
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    grid = image_grid(images)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 2 + 2 * 10, 2 + 3 * 10)  # 3 per row, 2 rows, padding 2
    assert torch.equal(grid[:, 2:10, 2:10], images[0])


def test_mlflow_and_png_fallback(tmp_path):
    grid = image_grid(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8))
    mlflow, plain = MLFlowLogger(), PlainLogger(str(tmp_path / "csv"))
    trainer = SimpleNamespace(loggers=[mlflow, plain], default_root_dir=str(tmp_path))
    written = log_grid(trainer, grid, "val/samples", step=7, epoch=3)
    run_id, array, artifact = mlflow.calls[0]
    assert run_id == "run-1" and artifact == "val/samples/epoch=0003-step=00000007.png"
    assert np.array_equal(array, grid.permute(1, 2, 0).numpy())
    png = tmp_path / "csv" / "samples" / "val_samples_epoch=0003-step=00000007.png"
    assert written == ["mlflow:val/samples", str(png)]
    assert np.array_equal(np.asarray(Image.open(png)), grid.permute(1, 2, 0).numpy())
    no_logger = SimpleNamespace(loggers=[], default_root_dir=str(tmp_path / "root"))
    assert log_grid(no_logger, grid, "samples", 0, 0) == [
        str(tmp_path / "root" / "samples" / "samples_epoch=0000-step=00000000.png")
    ]
