"""Image files as real data: a folder of images in sorted path order, read as 8-bit RGB."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly or recursively under ``folder``, in sorted order."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {root}")
    return files


def read_image(path: Path) -> torch.Tensor:
    """uint8 (3, H, W) RGB from any 8- or 16-bit image Pillow reads; files that are not, or that no
    8-bit RGB can represent faithfully, raise an error naming them.

    Palette, grey, CMYK, YCbCr and 1-bit images are converted by Pillow; an alpha channel is dropped
    (as pytorch-fid, torch-fidelity and clean-fid do). 16-bit grey is scaled to 8 bits (x * 255 /
    65535, rounded) where Pillow's own conversion would clip it at 255. 32-bit integer and float
    images (modes I, F) are refused: they carry no white level to scale from.
    """
    try:
        with Image.open(path) as im:
            im.load()
            arr = _rgb8(im, path)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)  # a writable copy


def _rgb8(im: Image.Image, path: Path) -> np.ndarray:
    if im.mode == "F":
        raise ValueError(f"{path}: 32-bit float image (mode F); save it as 8- or 16-bit to use it")
    if im.mode == "I":  # 32-bit integers: no known white level to scale from
        raise ValueError(f"{path}: 32-bit integer image (mode I); save it as 8- or 16-bit to use it")
    if im.mode.startswith("I;16"):
        values = np.asarray(im).astype(np.float64)
        grey = np.floor(values * (255.0 / 65535.0) + 0.5).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


class ImageFolder(Dataset):
    """uint8 RGB images from a folder (any nesting), in sorted path order."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.files = list_images(folder)
        self.folder = Path(folder)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return read_image(self.files[i])

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for f in self.files:
            st = f.stat()
            digest.update(f"{f.relative_to(self.folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
        return digest.hexdigest()


def collate_same_size(items: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in items}
    if len(shapes) > 1:
        raise ValueError(f"images in one batch differ in size ({sorted(shapes)[:3]}...); resize them first")
    return torch.stack(items)
