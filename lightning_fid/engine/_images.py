"""The one image conversion used everywhere: generator output -> uint8 NCHW RGB, as if saved to PNG.

Inception (FID/KID) and CLIP (CMMD) references read 8-bit images from disk. Generated samples are
floats, so they are quantised exactly as ``torchvision.utils.save_image`` quantises before PIL writes
the PNG: map the declared range to [0, 1], then ``floor(x * 255 + 0.5)`` clamped to [0, 255].
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

InputRange = tuple[float, float] | str  # (low, high) floats, or "uint8"

#: values may overshoot the declared range by this fraction of its width before it is an error
RANGE_TOLERANCE = 0.1


def parse_range(input_range: InputRange) -> tuple[float, float] | None:
    """Return (low, high) for float ranges, or None for uint8 input; raise on anything else."""
    if input_range == "uint8":
        return None
    if isinstance(input_range, str) or len(input_range) != 2:
        raise ValueError(f"input_range must be (low, high) or 'uint8', got {input_range!r}")
    low, high = float(input_range[0]), float(input_range[1])
    if not high > low:
        raise ValueError(f"input_range must have low < high, got {input_range!r}")
    return low, high


def check_images(images: torch.Tensor, what: str = "images") -> None:
    """Raise ValueError unless ``images`` is a 4-D NCHW tensor with 1 or 3 channels."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor of shape (N, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{what} must be 4-D (N, C, H, W), got shape {tuple(images.shape)}")
    channels = images.shape[1]
    if channels not in (1, 3):
        hint = ""
        if images.shape[-1] in (1, 3):
            hint = " It looks channels-last (NHWC): pass images.permute(0, 3, 1, 2)."
        elif channels == 4:
            hint = " Drop the alpha channel (images[:, :3]) or composite it first."
        raise ValueError(
            f"{what} must have 1 (grey) or 3 (RGB) channels in dim 1 (NCHW), got shape {tuple(images.shape)}.{hint}"
        )
    if images.shape[2] < 1 or images.shape[3] < 1 or images.shape[0] < 1:
        raise ValueError(f"{what} is empty: shape {tuple(images.shape)}")


@dataclass(frozen=True)
class Source:
    """Whose images these are, for messages: what to call them and which option declares their range."""

    what: str = "images"
    option: str = "input_range"
    hint: str = "what the generator outputs (e.g. (-1, 1) for tanh, (0, 1) for sigmoid)"
    silence: str = "range_check=False"


GENERATED = Source(
    "generated images",
    "input_range",
    "what the generator outputs (e.g. (-1, 1) for tanh, (0, 1) for sigmoid), or "
    "clamp the sampler's output to that range if it is not bounded (an untrained diffusion or flow sampler: "
    "return images.clamp(-1, 1))",
)
REAL = Source(
    "real data",
    "RealData.input_range",
    "the range of your real images (e.g. (0, 1) after ToTensor)",
    "RealData(range_check=False)",
)


def to_uint8(
    images: torch.Tensor, input_range: InputRange = (-1.0, 1.0), strict: bool = True, source: Source = GENERATED
) -> torch.Tensor:
    """Convert NCHW images in ``input_range`` to uint8 RGB NCHW, as saving a PNG would.

    - 1-channel images are repeated to 3 channels; 2 or 4 channels are an error.
    - NaN/inf raise ValueError (the callback turns that into a NaN metric with a warning).
    - Values outside the range are clamped, like a PNG writer does. If they overshoot by more than
      ``RANGE_TOLERANCE`` of the range's width, ``strict`` raises (the range is probably wrong, e.g.
      (0, 255) output declared as (-1, 1)); otherwise a warning is issued.
    ``source`` names the images and their range option in messages.
    """
    check_images(images, source.what)
    bounds = parse_range(input_range)
    if images.dtype == torch.uint8:
        if bounds not in (None, (0.0, 255.0)):
            raise ValueError(
                f"{source.what}: got uint8 images but {source.option}={input_range!r}; declare {source.option}='uint8'"
            )
        out = images
    else:
        if bounds is None:
            raise ValueError(f"{source.what}: {source.option}='uint8' but the images have dtype {images.dtype}")
        if not images.is_floating_point():
            raise ValueError(f"{source.what} must be floating point or uint8, got {images.dtype}")
        finite = torch.isfinite(images)
        if not bool(finite.all()):
            raise ValueError(f"{source.what} contain {int((~finite).sum())} non-finite values (NaN or inf)")
        low, high = bounds
        lo_seen, hi_seen = float(images.min()), float(images.max())
        slack = RANGE_TOLERANCE * (high - low)
        if lo_seen < low - slack or hi_seen > high + slack:
            message = (
                f"{source.what} span [{lo_seen:.4g}, {hi_seen:.4g}] but {source.option} is ({low:g}, {high:g}); "
                f"set {source.option} to {source.hint}"
            )
            if strict:
                raise ValueError(message)
            warnings.warn(message + "; values are clamped", stacklevel=2)
        scaled = (images.to(torch.float32) - low) / (high - low)
        out = (scaled * 255.0 + 0.5).clamp_(0.0, 255.0).to(torch.uint8)
    if out.shape[1] == 1:
        out = out.expand(-1, 3, -1, -1)
    return out.contiguous()


def check_fill(lo: float, hi: float, input_range: InputRange, source: Source = GENERATED) -> None:
    """Refuse data that fills only the upper half of its declared float range: the signature of [0, 1]
    images (``ToTensor``, a sigmoid) declared as (-1, 1), which would silently shift every feature.

    Data reaching below the middle, or staying close to it (``hi`` under a quarter of the width above
    the middle, as a fresh generator's output may), passes. Set ``range_check=False`` to silence it
    for an unusual but correct range.
    """
    bounds = parse_range(input_range)
    if bounds is None:
        return
    low, high = bounds
    width = high - low
    middle = low + width / 2
    if lo >= middle - 0.01 * width and hi >= middle + 0.25 * width:
        raise ValueError(
            f"{source.what} span [{lo:.4g}, {hi:.4g}], only the upper half of {source.option}=({low:g}, {high:g}): "
            f"set {source.option}=({middle:g}, {high:g}) if that is their range (e.g. (0, 1) images declared "
            f"(-1, 1)), or {source.silence} if the declared range is right"
        )


def image_grid(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (K, 3, H, W) -> uint8 (3, H', W') grid."""
    from torchvision.utils import make_grid

    nrow = max(1, math.ceil(math.sqrt(images_uint8.shape[0])))
    return make_grid(images_uint8.cpu(), nrow=nrow, padding=2)
