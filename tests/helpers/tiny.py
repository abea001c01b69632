"""A tiny generator, tiny extractors and real data that keep real-Trainer tests fast on CPU."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

Z_DIM, SIZE = 8, 8


_CALLS: dict[int, int] = {}  # forward passes per module, kept outside it (a counter attribute would be configuration)


class TinyFeatures(nn.Module):
    """A fixed random projection of 4x4-pooled images: a stand-in domain encoder (8-d)."""

    name = "tiny-features"
    feature_dim = 8
    input_range = (0.0, 1.0)

    def __init__(self, seed: int = 0, dim: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.feature_dim = dim
        self.proj = nn.Parameter(torch.randn(3 * 16, dim, generator=g) / 4, requires_grad=False)
        _CALLS[id(self)] = 0

    @property
    def calls(self) -> int:
        """How many forward passes this module ran."""
        return _CALLS.get(id(self), 0)

    def forward(self, x):
        _CALLS[id(self)] = _CALLS.get(id(self), 0) + 1
        return torch.tanh(F.adaptive_avg_pool2d(x, 4).flatten(1) @ self.proj)


class TinyEmbed(TinyFeatures):
    """Unit-norm embeddings, like CLIP's, for CMMD."""

    name = "tiny-embed"

    def forward(self, x):
        e = super().forward(x)
        return e / e.norm(dim=1, keepdim=True)


class TinyGAN(pl.LightningModule):
    """A linear+tanh generator pulled towards the real images; validation_step is a no-op."""

    def __init__(self, lr: float = 0.05, nan_from_epoch: int | None = None, bn_momentum: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)  # identical initial weights in every test run and every process
        self.generator = nn.Sequential(nn.Linear(Z_DIM, 3 * SIZE * SIZE), nn.Tanh())
        # BatchNorm output differs in train mode: sampling must use eval mode
        self.bn_probe = nn.BatchNorm1d(Z_DIM, momentum=bn_momentum)

    def forward(self, z):
        out = self.generator(self.bn_probe(z)).view(-1, 3, SIZE, SIZE)
        if self.hparams.nan_from_epoch is not None and self.current_epoch >= self.hparams.nan_from_epoch:
            out = out * float("nan")
        return out

    def sample_images(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(batch_size, Z_DIM, generator=generator).to(self.device)
        return self(z)

    def training_step(self, batch, batch_idx):
        images = batch[0]
        # noise seeded by the step: a resumed run trains exactly like an uninterrupted one
        z = torch.randn(images.shape[0], Z_DIM, generator=torch.Generator().manual_seed(self.global_step))
        return F.mse_loss(self(z), images)

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def real_images(n: int = 37, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(-0.8, 0.8, SIZE).view(1, 1, 1, SIZE)
    return (base + 0.3 * torch.randn(n, 3, SIZE, SIZE, generator=g)).clamp(-1, 1)


def loaders(n: int = 37, batch_size: int = 8):
    ds = TensorDataset(real_images(n), torch.zeros(n))
    return DataLoader(ds, batch_size=batch_size), DataLoader(ds, batch_size=batch_size)


def sample(module, batch_size, generator):
    return module.sample_images(batch_size, generator)


def trainer_kwargs(tmp_path, **overrides):
    kw = dict(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        limit_train_batches=2,
        limit_val_batches=1,
    )
    kw.update(overrides)
    return kw


def standard_metrics(kid_subsets: int = 4, kid_subset_size: int = 10) -> tuple:
    """FID, KID on small subsets and CMMD on the tiny embedding: what most callback tests score."""
    from lightning_fid.metrics import CMMD, KID

    return ("fid", KID(subsets=kid_subsets, subset_size=kid_subset_size), CMMD(extractor=TinyEmbed(seed=5)))


def make_callback(tmp_path=None, **overrides):
    """The GenerativeMetrics most tests use: all three metrics on the tiny extractors, 23 samples."""
    from lightning_fid import GenerativeMetrics

    kw = dict(
        real=TensorDataset(real_images(37)),
        sample_fn=sample,
        metrics=standard_metrics(),
        feature_extractor=TinyFeatures(),
        num_samples=23,
        batch_size=5,
        progress=False,
        log_images=4,
    )
    if tmp_path is not None:
        kw["cache_dir"] = tmp_path / "cache"
    else:
        kw["use_cache"] = False
    kw.update(overrides)
    return GenerativeMetrics(**kw)


class TinyData(pl.LightningDataModule):
    """The real images as a datamodule (for LightningCLI configs)."""

    def train_dataloader(self):
        return loaders()[0]

    def val_dataloader(self):
        return loaders()[1]


def fit_recording_steps(tmp_path, model=None, max_epochs=2, **callback_kw):
    """Fit with make_callback(**callback_kw); returns the callback. ``fit_recording_steps.trained``
    says whether a training step started, also when fit raised (errors must come before training)."""
    steps = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, *a):
            steps.append(1)

    fit_recording_steps.trained = False  # also when the callback refuses its options before any Trainer
    cb = make_callback(tmp_path, **callback_kw)
    trainer = pl.Trainer(callbacks=[cb, Spy()], **trainer_kwargs(tmp_path, max_epochs=max_epochs))
    try:
        trainer.fit(model or TinyGAN(), *loaders())
    finally:
        fit_recording_steps.trained = bool(steps)
    return cb


def tiny_slots(names=("fid",), features=None, embed=None) -> list:
    """The extractor slots of ``names`` on the tiny networks (CMMD on ``embed``, the rest on ``features``)."""
    from lightning_fid.engine import build_slots
    from lightning_fid.metrics import CMMD, resolve_metrics

    metrics = resolve_metrics([CMMD(extractor=embed or TinyEmbed(seed=5)) if n == "cmmd" else n for n in names])
    return build_slots(metrics, features or TinyFeatures())[0]
