"""pil_bicubic_resize is bit-identical to PIL's Image.resize(..., BICUBIC) on 8-bit RGB images."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_fid.extractors.resize import pil_bicubic_resize


def _pil(img: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    return np.asarray(pil.resize((size[1], size[0]), Image.BICUBIC)).transpose(2, 0, 1)


def _sizes():
    rng = random.Random(7)
    fixed = [
        ((32, 32), (336, 336)),
        ((256, 256), (336, 336)),
        ((500, 417), (336, 336)),
        ((1000, 7), (336, 336)),
        ((7, 1000), (336, 336)),
        ((64, 100), (336, 336)),
        ((336, 336), (336, 336)),
        ((336, 20), (336, 336)),
    ]
    rand = [((rng.randint(3, 400), rng.randint(3, 400)), (rng.randint(3, 300), rng.randint(3, 300))) for _ in range(30)]
    return fixed + rand


@pytest.mark.parametrize("in_size, out_size", _sizes())
def test_bit_identical_to_pil(in_size, out_size):
    g = torch.Generator().manual_seed(in_size[0] * 1000 + in_size[1])
    img = torch.randint(0, 256, (1, 3, *in_size), generator=g, dtype=torch.uint8)  # noise: the hardest case
    ours = pil_bicubic_resize(img, out_size)[0].numpy()
    assert np.array_equal(ours, _pil(img[0], out_size))


def test_rejects_float_input():
    with pytest.raises(ValueError, match="expects uint8"):
        pil_bicubic_resize(torch.zeros(1, 3, 4, 4), (8, 8))
