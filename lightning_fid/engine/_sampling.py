"""Fixed-noise sampling that gives the same sample set for any number of processes.

The N samples are cut into fixed global batches; batch b draws its noise from a CPU generator
seeded by (seed, b); batches are dealt to ranks round-robin and every feature row carries its global
sample index, so features can be put back in global order. Every evaluation reuses the same noise,
so values are comparable across epochs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

SampleFn = Callable[..., torch.Tensor]  # sample_fn(module, batch_size, generator[, index=][, conditions=])
SAMPLE_METHOD = "sample_images"  # LightningModule.sample_images(batch_size, generator[, index=][, conditions=])
KEYWORDS = ("index", "conditions")


def _call_sample_method(module: torch.nn.Module, batch_size: int, generator: torch.Generator, **kw: Any) -> Any:
    return getattr(module, SAMPLE_METHOD)(batch_size, generator, **kw)


@dataclass(frozen=True)
class Sampler:
    """How to call the user's sampler: ``fn(module, batch_size, generator, **keywords)``, where
    ``keywords`` are the optional ones it declares: ``index`` (int64 global sample indices of the
    batch) and ``conditions`` (the batch's slice of the ``conditions=`` sequence)."""

    fn: Callable[..., Any]
    keywords: frozenset[str]


def _declared(fn: Callable[..., Any], skip: int) -> frozenset[str]:
    try:
        params = list(inspect.signature(fn).parameters.values())[skip:]
    except (TypeError, ValueError):  # builtins, C extensions: no optional keywords
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return frozenset(KEYWORDS)
    return frozenset(p.name for p in params if p.name in KEYWORDS and p.kind is not inspect.Parameter.POSITIONAL_ONLY)


def make_sampler(sample_fn: SampleFn | None, module: torch.nn.Module) -> Sampler:
    """The sampler for ``module``: ``sample_fn`` or the module's ``sample_images`` method."""
    if sample_fn is not None:
        return Sampler(sample_fn, _declared(sample_fn, 3))
    method = getattr(module, SAMPLE_METHOD, None)
    if not callable(method):
        raise ValueError(
            f"pass sample_fn=... or define {type(module).__name__}.{SAMPLE_METHOD}(batch_size, generator) "
            "returning images"
        )
    return Sampler(_call_sample_method, _declared(method, 2))


def condition_slice(conditions: Any, index: torch.Tensor) -> Any:
    """The conditions of the samples ``index``: a tensor is indexed, any other sequence gives a list."""
    if isinstance(conditions, torch.Tensor):
        return conditions[index.to(conditions.device)]
    if isinstance(conditions, np.ndarray):
        return conditions[index.numpy()]
    return [conditions[i] for i in index.tolist()]


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
    sampler: Sampler, module: torch.nn.Module, batches: list[Batch], seed: int, conditions: Sequence[Any] | None = None
) -> Iterator[tuple[Batch, torch.Tensor]]:
    """Yield (batch, images) with the module in eval mode and no grad; its mode is restored after.

    Sample i always gets noise batch ``i // batch_size`` and condition ``conditions[i]``, whatever
    the rank that draws it.
    """
    if conditions is not None and "conditions" not in sampler.keywords:
        raise ValueError("conditions= is set, but the sampler declares no `conditions` keyword parameter")
    was_training = module.training
    module.eval()
    try:
        for batch in batches:
            keywords: dict[str, Any] = {}
            if "index" in sampler.keywords:
                keywords["index"] = batch.sample_index
            if conditions is not None:
                keywords["conditions"] = condition_slice(conditions, batch.sample_index)
            with torch.no_grad():
                images = sampler.fn(module, batch.size, noise_generator(seed, batch.index), **keywords)
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
