"""Image files as real data: a folder of images in sorted path order, read as 8-bit RGB, and the uint8
images of an ADM batch ``.npz`` (``arr_0``), read without loading the whole array."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import BinaryIO

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


def _npy_header(stream: BinaryIO, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy whose start ``stream`` is at (numpy's own parser, no pickle)."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    raise ValueError(f"{where}: .npy format version {version} is not supported (1.0 and 2.0 are)")


class NpzImages(Dataset):
    """uint8 (3, H, W) images from one array of an .npz: an ADM batch's ``arr_0``, uint8 N x H x W x 3.

    guided-diffusion's evaluator streams ``arr_0`` from the zip in batches (``open_npz_array`` in
    ``evaluations/evaluator.py``) rather than loading 10 000 or 50 000 images at once; so does this: an
    array stored uncompressed (``np.savez``, as ADM's batches are) is memory-mapped, a compressed one
    (``np.savez_compressed``) is read from the zip image by image. Nothing is unpickled.

    Raises:
        ValueError: the member is missing, or is not uint8 images in N x H x W x 3 (C) order.
    """

    def __init__(self, path: str | os.PathLike, member: str = "arr_0") -> None:
        self.path, self.member = Path(path), member
        where = f"{self.path}: {member}"
        try:
            with zipfile.ZipFile(self.path) as archive:
                info = archive.getinfo(f"{member}.npy")
                with archive.open(info) as stream:
                    shape, fortran, dtype = _npy_header(stream, where)
                    self.header_size = stream.tell()
                self.stored = info.compress_type == zipfile.ZIP_STORED
                self.offset = self._data_offset(info) + self.header_size if self.stored else 0
        except (KeyError, zipfile.BadZipFile, OSError) as exc:
            raise ValueError(f"{where}: cannot read images ({type(exc).__name__}: {exc})") from None
        if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or fortran:
            raise ValueError(
                f"{where} holds {dtype} of shape {shape}{' (Fortran order)' if fortran else ''}; reference images "
                "must be uint8 N x H x W x 3 (RGB, channels last), as guided-diffusion's batches are"
            )
        self.shape = tuple(int(s) for s in shape)
        self._array: np.ndarray | None = None
        self._archive: zipfile.ZipFile | None = None
        self._stream: BinaryIO | None = None

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a stored member's bytes start in the file: after its local header (30 bytes, name, extra)."""
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"{self.path}: {self.member}.npy has a corrupt zip header")
        return info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.shape[0]:
            raise IndexError(f"image {i} of {self.shape[0]}")
        if self.stored:
            if self._array is None:
                self._array = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=self.shape)
            image = np.array(self._array[i])
        else:  # compressed: seek in the zip member (forward seeks in index order cost one decompression)
            if self._stream is None:
                self._archive = zipfile.ZipFile(self.path)
                self._stream = self._archive.open(f"{self.member}.npy")
            size = self.shape[1] * self.shape[2] * 3
            self._stream.seek(self.header_size + i * size)
            data = self._stream.read(size)
            if len(data) != size:
                raise ValueError(f"{self.path}: {self.member} ends before image {i} of {self.shape[0]}")
            image = np.frombuffer(data, dtype=np.uint8).reshape(self.shape[1:]).copy()
        return torch.from_numpy(image).permute(2, 0, 1)

    def __getstate__(self) -> dict:  # open handles stay with their process
        return {**self.__dict__, "_array": None, "_archive": None, "_stream": None}
