"""A synthetic training run whose true quality improves, then plateaus while its samples keep changing.

The "generator" maps the fixed noise z to images tanh(0.4 R_e z + shift_e) (48 values, 3 x 4 x 4): the
shift falls linearly from 0.9 to 0.3 over the first ``plateau`` epochs and stays at 0.3 after, and R_e
is a new random rotation each epoch. Since z is isotropic, R_e z has the same distribution whatever
the rotation: from epoch ``plateau`` on the generated distribution, and with it the true FID, no
longer changes, while every sample does, as a GAN's outputs keep moving at a plateau. The real
images are the shift-free distribution, so the plateau's FID stays well above its bias. Nothing is
trained: the epoch alone sets the generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

DIM = 48


class Pool(nn.Module):
    """The encoder: 4 x 4 average pooling of the three channels (48 features)."""

    name, feature_dim, input_range = "pool4", DIM, (0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 4).flatten(1)


class PlateauGenerator(pl.LightningModule):
    """Improves until epoch ``plateau``, then keeps its distribution (see the module docstring)."""

    def __init__(self, plateau: int = 5, seed: int = 0) -> None:
        super().__init__()
        self.plateau, self.seed = plateau, seed
        self.weight = nn.Parameter(torch.zeros(1))
        self.epoch: int | None = None  # outside a trainer: the epoch whose generator to sample

    def shift(self, epoch: int) -> float:
        return 0.3 + 0.6 * max(0, self.plateau - epoch) / self.plateau

    def sample_images(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        epoch = self.current_epoch if self.epoch is None else self.epoch
        z = torch.randn(batch_size, DIM, generator=generator)
        g = torch.Generator().manual_seed(self.seed * 10_000 + epoch)
        rotation, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=g))
        return torch.tanh(0.4 * (z @ rotation) + self.shift(epoch)).view(-1, 3, 4, 4)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return (self.weight**2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def real_set(n: int = 2000) -> TensorDataset:
    return TensorDataset(
        torch.tanh(0.4 * torch.randn(n, DIM, generator=torch.Generator().manual_seed(99))).view(-1, 3, 4, 4)
    )


def plateau_run(
    tmp_path: Path, callbacks: list, seed: int = 0, plateau: int = 5, max_epochs: int = 30, num_samples: int = 400
) -> Any:
    """Fit the plateau generator with GenerativeMetrics(fid) and ``callbacks``; returns the metrics callback."""
    from lightning_fid import GenerativeMetrics

    metrics = GenerativeMetrics(
        real=real_set(),
        sample_fn=lambda module, n, g: module.sample_images(n, g),
        metrics=["fid"],
        feature_extractor=Pool(),
        num_samples=num_samples,
        batch_size=200,
        use_cache=False,
        progress=False,
        log_images=0,
    )
    trainer = pl.Trainer(
        callbacks=[metrics, *callbacks],
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=1,
    )
    trainer.fit(PlateauGenerator(plateau, seed), DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=4))
    return metrics


def plain_stop(values: list[float], patience: int) -> int | None:
    """The evaluation at which ``EarlyStopping(mode="min", patience=patience)`` stops on ``values``, or None
    if it would not stop within them."""
    best, wait = float("inf"), 0
    for i, v in enumerate(values):
        if v < best:
            best, wait = v, 0
        else:
            wait += 1
            if wait >= patience:
                return i
    return None
