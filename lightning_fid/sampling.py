"""Fixed-noise sampling that gives the same sample set for any number of processes.

The N samples are cut into fixed global batches; batch b draws its noise from a CPU generator
seeded by (seed, b); batches are dealt to ranks round-robin and every feature row carries its global
sample index, so features can be put back in global order. Every evaluation reuses the same noise,
so values are comparable across epochs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

SampleFn = Callable[[torch.nn.Module, int, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Batch:
    index: int  # global batch number b
    start: int  # global index of its first sample
    size: int

    @property
    def sample_index(self) -> torch.Tensor:
        return torch.arange(self.start, self.start + self.size, dtype=torch.int64)


def batch_seed(seed: int, batch: int) -> int:
    """A well-mixed 63-bit seed for batch ``batch`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, batch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def noise_generator(seed: int, batch: int) -> torch.Generator:
    """The CPU generator batch ``batch`` draws its noise from."""
    return torch.Generator().manual_seed(batch_seed(seed, batch))


def plan(num_samples: int, batch_size: int, rank: int = 0, world: int = 1) -> list[Batch]:
    """The batches this rank handles: global batch b goes to rank b % world."""
    batches = []
    for b, start in enumerate(range(0, num_samples, batch_size)):
        if b % world == rank:
            batches.append(Batch(b, start, min(batch_size, num_samples - start)))
    return batches


def generate(
    sample_fn: SampleFn, module: torch.nn.Module, batches: list[Batch], seed: int
) -> Iterator[tuple[Batch, torch.Tensor]]:
    """Yield (batch, images) with the module in eval mode and no grad; its mode is restored after."""
    was_training = module.training
    module.eval()
    try:
        for batch in batches:
            with torch.no_grad():
                images = sample_fn(module, batch.size, noise_generator(seed, batch.index))
            if not isinstance(images, torch.Tensor):
                raise ValueError(f"sample_fn must return a tensor of images, got {type(images).__name__}")
            if images.ndim != 4 or images.shape[0] != batch.size:
                raise ValueError(
                    f"sample_fn(module, batch_size={batch.size}, generator) returned shape {tuple(images.shape)}; "
                    f"expected ({batch.size}, C, H, W) images"
                )
            yield batch, images
    finally:
        module.train(was_training)
