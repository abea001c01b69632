"""Evaluation wall time of GenerativeMetrics vs (sampling + bare extractor forward), same samples.

    python benchmarks/bench_callback.py [--num-samples 400] [--batch-size 50] [--metrics fid,kid]

A small DCGAN generator (32x32) and the TF-Inception extractor (published weights if cached, else
random weights in the published format: same cost). The bare loop samples the same fixed-noise
batches and runs torch-fidelity's extractor on the uint8 images, nothing else. The callback's time
is its logged ``eval_seconds`` (sampling, conversion, extraction, statistics, all-reduce, metrics).
Target: ratio <= 1.1 on CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lightning_fid import GenerativeMetrics, InceptionV3  # noqa: E402
from lightning_fid.engine._images import to_uint8  # noqa: E402
from lightning_fid.engine._sampling import noise_generator, plan  # noqa: E402
from lightning_fid.extractors.weights import INCEPTION_WEIGHTS, cache_dir  # noqa: E402
from lightning_fid.metrics import KID  # noqa: E402


class DCGAN(pl.LightningModule):
    def __init__(self, z: int = 64):
        super().__init__()
        self.z = z
        self.net = nn.Sequential(
            nn.ConvTranspose2d(z, 128, 4, 1, 0),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 4, 2, 1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 4, 2, 1),
            nn.Tanh(),
        )

    def sample_images(self, n, generator):
        return self.net(torch.randn(n, self.z, 1, 1, generator=generator).to(self.device))

    def training_step(self, batch, i):
        return self.net[0].weight.sum() * 0.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-samples", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--metrics", default="fid,kid")
    args = parser.parse_args()
    from helpers.weights import write_random_inception

    weights = cache_dir() / INCEPTION_WEIGHTS.filename
    if not weights.is_file():
        weights = write_random_inception(Path(tempfile.mkdtemp()) / "inception.pth")
        print("(published Inception weights not cached: random weights in the same format, same cost)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = InceptionV3(weights)
    torch.manual_seed(0)
    model = DCGAN()
    real = torch.utils.data.TensorDataset(torch.rand(args.num_samples, 3, 32, 32) * 2 - 1)
    kid = KID(subsets=100, subset_size=min(1000, args.num_samples))
    metrics = [kid if name == "kid" else name for name in args.metrics.split(",")]
    cb = GenerativeMetrics(
        real=real,
        sample_fn=lambda m, n, g: m.sample_images(n, g),
        metrics=metrics,
        feature_extractor=extractor,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        use_cache=False,
        progress=False,
        log_images=0,
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 1)), batch_size=2)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb],
    )
    trainer.fit(model, loader)  # no validation_step: evaluates at each train epoch end
    first, ours = cb.history[0]["eval_seconds"], cb.history[-1]["eval_seconds"]

    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in plan(args.num_samples, args.batch_size):
            images = model.sample_images(batch.size, noise_generator(0, batch.index))
            extractor.net(to_uint8(images))
    bare = time.perf_counter() - start
    print(f"{args.num_samples} samples, metrics {metrics}, CPU threads {torch.get_num_threads()}")
    print(f"  GenerativeMetrics evaluation: {ours:.2f}s per evaluation ({first:.2f}s the first, which also computes")
    print(f"  the run's reference-side KID sums)   sampling + bare extractor: {bare:.2f}s")
    print(f"  ratio: {ours / bare:.3f} per evaluation, {first / bare:.3f} the first (target <= 1.1)")


if __name__ == "__main__":
    main()
