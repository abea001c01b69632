"""PIL's bicubic resize of 8-bit images, reproduced exactly in torch (CPU or GPU).

The CMMD reference resizes with PIL (``Image.resize(..., BICUBIC)``). torch's antialiased bicubic
interpolation differs from it by up to ~24 levels when upsampling, so we port Pillow's
``Resample.c``: separable passes, Keys cubic with a = -0.5, support
scaled by the downscale factor, coefficients normalised and rounded to 22-bit fixed point, 8-bit
rounding and clipping after each pass. Each pass is one matmul with an integer-valued float64
weight matrix; every sum is an exact integer below 2^53, so the result is bit-identical to PIL.

Pass order: Pillow runs the horizontal pass first, except that since Pillow 13 (python-pillow/Pillow
#9549) it runs the vertical pass first when the height shrinks much more than the width. The rule
below, (in_h - out_h) > 2 (in_w - out_w) with in_h > out_h, was measured against Pillow 13.0.0 on
random sizes (tests/test_resize.py); square inputs, the usual case for generated images, always go
horizontal first, as in every Pillow version.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


@lru_cache(maxsize=32)
def _coefficients(in_size: int, out_size: int) -> torch.Tensor:
    """(out_size, in_size) integer fixed-point weights, as Pillow's precompute_coeffs + normalize."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        w = [_bicubic((x + xmin - center + 0.5) / filterscale) for x in range(xmax - xmin)]
        total = sum(w)
        for x, value in enumerate(w):
            value = value / total if total != 0.0 else value
            fixed = math.trunc(value * (1 << _PRECISION_BITS) + (-0.5 if value < 0 else 0.5))
            weights[xx, xmin + x] = fixed
    return weights


def _pass(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Resample the last dimension of float64 8-bit values; round and clip like Pillow's clip8."""
    acc = x @ weights.T.to(x.device) + float(1 << (_PRECISION_BITS - 1))
    return torch.floor(acc / float(1 << _PRECISION_BITS)).clamp_(0.0, 255.0)


def pil_bicubic_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) to ``size`` = (height, width) exactly as PIL's BICUBIC does."""
    if images.dtype != torch.uint8:
        raise ValueError(f"pil_bicubic_resize expects uint8 images, got {images.dtype}")
    out_h, out_w = size
    in_h, in_w = images.shape[-2:]
    x = images.to(torch.float64)
    vertical_first = in_h > out_h and (in_h - out_h) > 2 * (in_w - out_w) and _pillow_picks_order()
    if vertical_first:
        x = _vertical(x, out_h)
    if x.shape[-1] != out_w:
        x = _pass(x, _coefficients(x.shape[-1], out_w))
    if not vertical_first:
        x = _vertical(x, out_h)
    return x.to(torch.uint8)


def _vertical(x: torch.Tensor, out_h: int) -> torch.Tensor:
    if x.shape[-2] == out_h:
        return x
    return _pass(x.transpose(-1, -2), _coefficients(x.shape[-2], out_h)).transpose(-1, -2)


@lru_cache(maxsize=1)
def _pillow_picks_order() -> bool:
    """Whether the installed Pillow has the vertical-first rule (13.0 and later); True without Pillow."""
    try:
        import PIL
    except ImportError:
        return True
    return int(PIL.__version__.split(".")[0]) >= 13
