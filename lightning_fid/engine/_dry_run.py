"""The dry run: the whole chain once per batch shape an evaluation will use, before training.

Everything knowable before training is refused before training: a sampler that breaks at the full
batch or only at an evaluation's last, partial batch; images of the wrong shape, dtype or range;
a sampler that does not draw its noise from the ``generator`` it is given (every evaluation would
then score different noise); an extractor that returns features of the wrong size or non-finite
features. This rank only: nothing is communicated (the caller agrees across ranks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lightning_fid.engine._hygiene import full_precision, sampling_precision
from lightning_fid.engine._images import GENERATED, InputRange, check_fill, to_uint8
from lightning_fid.engine._sampling import Sampler, generate, plan
from lightning_fid.engine._slots import Slot, extract


def _sample(sampler: Sampler, module: nn.Module, size: int, seed: int, conditions: Any, autocast: Any, device: Any):
    try:
        with sampling_precision(autocast, device):
            ((_, images),) = list(generate(sampler, module, plan(size, size), seed, conditions))
    except RuntimeError as exc:
        dtypes = {p.dtype for p in module.parameters()} - {torch.float32}
        if (
            "dtype" in str(exc).lower() or "scalar type" in str(exc).lower()
        ) and dtypes:  # e.g. Trainer(precision="bf16-true"): float32 noise, bf16 weights
            raise ValueError(
                f"the sampler failed ({exc}): the module's weights are {', '.join(sorted(map(str, dtypes)))}, as with "
                "Trainer(precision='bf16-true'), but its noise is float32; cast the noise to the module's dtype: "
                "torch.randn(n, z_dim, generator=generator).to(module.device, module.dtype)"
            ) from exc
        raise
    return images.detach()


def _check_noise(first: torch.Tensor, again: torch.Tensor) -> None:
    differ = (first.to(torch.int16) - again.to(torch.int16)).abs() > 2
    if float(differ.float().mean()) > 0.01:
        raise ValueError(
            "the sampler does not draw its noise from the `generator` it is given: the same batch sampled twice "
            "gives different images, so every evaluation would score different noise; draw all randomness from "
            "it, e.g. torch.randn(n, z_dim, generator=generator)"
        )


def dry_run(
    sampler: Sampler,
    module: nn.Module,
    slots: list[Slot],
    *,
    batch_sizes: Sequence[int],
    seed: int,
    input_range: InputRange,
    device: torch.device,
    conditions: Sequence[Any] | None = None,
    sample_autocast: torch.dtype | None = None,
    range_check: bool = True,
) -> None:
    """Sample a batch of each size in ``batch_sizes`` (the full batch first, then the evaluations'
    last partial batches), check the images, check that the noise comes from the generator, and
    extract features of the full batch with every network.

    Raises:
        ValueError: saying what to change.
    """
    try:
        full = None
        for size in dict.fromkeys(batch_sizes):
            images = _sample(sampler, module, size, seed, conditions, sample_autocast, device)
            with full_precision():
                u8 = to_uint8(images, input_range, strict=True, source=GENERATED)
                if range_check and images.dtype != torch.uint8:
                    check_fill(float(images.min()), float(images.max()), input_range, GENERATED)
            full = u8 if full is None else full
        # the last batch again (the smallest size the run uses): the same noise must give the same images
        again = _sample(sampler, module, size, seed, conditions, sample_autocast, device)
        with full_precision():
            _check_noise(u8, to_uint8(again, input_range, strict=False))
    except ValueError as exc:
        raise ValueError(f"GenerativeMetrics dry run: {exc}") from exc
    with full_precision():
        computed: dict[int, Any] = {}
        for slot in slots:
            feats = extract(slot, full.to(device), computed)
            if not bool(torch.isfinite(feats).all()):
                raise ValueError(
                    f"GenerativeMetrics dry run: {slot.info.name} returned NaN/inf features for the "
                    "generated samples; check the extractor (an L2 normalisation of a constant image?)"
                )
