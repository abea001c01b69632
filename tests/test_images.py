"""to_uint8 against what torchvision.utils.save_image + PIL write to a PNG, and its bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import save_image

from lightning_fid.engine._images import to_uint8


def _png_bytes(img: torch.Tensor, tmp_path, value_range=None) -> np.ndarray:
    path = tmp_path / "x.png"
    if value_range is None:
        save_image(img, path)
    else:
        save_image(img, path, normalize=True, value_range=value_range)
    return np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_matches_png_written_by_pil(tmp_path, value_range):
    g = torch.Generator().manual_seed(0)
    low, high = value_range
    img = torch.rand(1, 3, 9, 11, generator=g) * (high - low) + low
    img[0, 0, 0, :4] = torch.tensor([low, high, (low + high) / 2, low + (high - low) * 127.5 / 255])  # edges, ties
    ours = to_uint8(img, value_range)[0].numpy()
    assert np.array_equal(ours, _png_bytes(img[0], tmp_path, None if value_range == (0.0, 1.0) else value_range))


def test_grey_becomes_rgb_and_uint8_passes_through():
    grey = torch.rand(2, 1, 5, 5)
    out = to_uint8(grey, (0, 1))
    assert out.shape == (2, 3, 5, 5) and torch.equal(out[:, 0], out[:, 2])
    u = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(to_uint8(u, "uint8"), u)
    assert torch.equal(to_uint8(u.float(), (0, 255)), u)


def test_small_overshoot_is_clamped_large_one_raises():
    x = torch.tensor([-1.05, 1.05, 0.0]).view(1, 1, 1, 3)
    assert to_uint8(x, (-1, 1))[0, 0, 0].tolist() == [0, 255, 128]
    wrong = torch.rand(1, 3, 4, 4) * 255  # 0..255 floats declared as (-1, 1)
    with pytest.raises(ValueError, match=r"images span .* but input_range is \(-1, 1\)"):
        to_uint8(wrong, (-1, 1))
    with pytest.warns(UserWarning, match="values are clamped"):
        out = to_uint8(wrong, (-1, 1), strict=False)
    assert out.dtype == torch.uint8


@pytest.mark.parametrize(
    "shape, match",
    [
        ((3, 8, 8), "must be 4-D"),
        ((2, 2, 8, 8), "1 \\(grey\\) or 3 \\(RGB\\) channels"),
        ((2, 4, 8, 8), "Drop the alpha channel"),
        ((2, 8, 8, 3), "channels-last"),
    ],
)
def test_bad_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        to_uint8(torch.zeros(shape), (0, 1))


def test_nan_and_dtype_errors():
    x = torch.zeros(1, 3, 2, 2)
    x[0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        to_uint8(x, (0, 1))
    with pytest.raises(ValueError, match="declare input_range='uint8'"):
        to_uint8(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), (-1, 1))
    with pytest.raises(ValueError, match="input_range must"):
        to_uint8(torch.zeros(1, 3, 2, 2), (1, 0))
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        to_uint8(np.zeros((1, 3, 2, 2)), (0, 1))
