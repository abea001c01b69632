"""Real data for reference statistics: loaders, datasets, folders, and reference files (``.npz`` /
``.pkl`` of this package, ADM, EDM, EDM2, pytorch-fid, clean-fid: :mod:`lightning_fid.engine._formats`).

Every source becomes a stream of (global sample indices, images) batches for this rank. Exactly
``num_real`` samples are used, each on exactly one rank: batches are dealt round-robin by global
batch number, never through DistributedSampler (which pads with duplicates).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lightning_fid.engine._image_files import ImageFolder, collate_same_size
from lightning_fid.engine._images import InputRange, parse_range


@dataclass(frozen=True)
class RealOptions:
    """How real images are read for reference statistics (:meth:`RealData.options` makes one).

    Args:
        input_range: range of real float images (uint8 tensors and image files are always 8-bit).
        batch_size: images per extractor batch.
        num_real: use the first ``num_real`` samples (None: all), each once across ranks.
        image_key: which entry of dict / tuple batches holds the images.
        transform: ``transform(batch) -> images`` when batches need more than picking an entry.
        range_check: refuse float images that fill only the upper half of ``input_range``.
        label_key: which entry of real batches holds integer class labels (per-class metrics).
        reference_id: your name for this exact real data and its reading (transform included): the
            cache key uses it instead of inspecting the data, e.g. when ``transform`` is a lambda.
    """

    input_range: InputRange = (-1.0, 1.0)
    batch_size: int = 250
    num_real: int | None = None
    image_key: str | int | None = None
    transform: Callable[[Any], torch.Tensor] | None = None
    range_check: bool = True
    reference_id: str | None = None
    label_key: str | int | None = None

    def __post_init__(self) -> None:
        parse_range(self.input_range)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.num_real is not None and (not isinstance(self.num_real, int) or self.num_real < 2):
            raise ValueError(
                f"num_real={self.num_real!r}: reference statistics need at least 2 real samples (None: all)"
            )


@dataclass(frozen=True)
class RealData:
    """The reference data and how to read it: what ``real=`` accepts besides the plain forms.

    Args:
        source: a DataLoader, a Dataset, a callable returning either, ``"train"`` / ``"val"`` (the
            trainer's loaders, in the callback), an image folder, or a reference file: a statistics
            ``.npz`` (this package's, EDM's, pytorch-fid's, clean-fid's), an EDM2 ``.pkl`` or an ADM batch
            ``.npz`` (whose ``arr_0`` images also serve the metrics that need real features).
        input_range: range of real float images (default: the generated images' ``input_range``;
            uint8 tensors and image files are always 8-bit).
        num_real: use the first ``num_real`` samples (None: all), each once across ranks.
        image_key: which entry of dict / tuple batches holds the images (default: the first tensor,
            or a dict key among ``image``, ``images``, ``img``, ``x``).
        transform: ``transform(batch) -> images`` for batches that need more than picking an entry.
        label_key: which entry of real batches holds integer class labels (per-class metrics).
        reference_id: your name for this exact data and its reading: the statistics cache is keyed by
            it instead of by inspecting the data (needed to cache when ``transform`` is a lambda).
        range_check: refuse float images that fill only the upper half of ``input_range``, the
            signature of [0, 1] images declared as (-1, 1). Set False for an unusual but correct range.

    Raises:
        ValueError: ``source`` is None or an option is out of range.

    Example::

        GenerativeMetrics(real=RealData(val_set, image_key="image", label_key="label"), ...)
    """

    source: Any
    input_range: InputRange | None = None
    num_real: int | None = None
    image_key: str | int | None = None
    transform: Callable[[Any], torch.Tensor] | None = None
    label_key: str | int | None = None
    reference_id: str | None = None
    range_check: bool = True

    def __post_init__(self) -> None:
        if self.source is None:
            raise ValueError(
                "real= is required: reference images (loader, dataset, folder, 'train'/'val') or a reference file"
            )
        if isinstance(self.source, RealData):
            raise ValueError("RealData(source=RealData(...)): pass the data itself as source")
        if isinstance(self.source, (str, os.PathLike)) and str(self.source) not in ("train", "val"):
            if not Path(self.source).exists():
                raise ValueError(f"real={str(self.source)!r}: no such image folder or reference file")
        if self.input_range is not None:
            parse_range(self.input_range)
        if self.num_real is not None and (not isinstance(self.num_real, int) or self.num_real < 2):
            raise ValueError(
                f"num_real={self.num_real!r}: reference statistics need at least 2 real samples (None: all)"
            )

    def options(self, batch_size: int, default_range: InputRange) -> RealOptions:
        """How to read the data in batches of ``batch_size`` (``default_range``: the generated range)."""
        return RealOptions(
            input_range=self.input_range if self.input_range is not None else default_range,
            batch_size=batch_size,
            num_real=self.num_real,
            image_key=self.image_key,
            transform=self.transform,
            range_check=self.range_check,
            reference_id=self.reference_id,
            label_key=self.label_key,
        )


def as_real_data(real: Any) -> RealData:
    """``real`` as a :class:`RealData` (the plain forms become its ``source``)."""
    return real if isinstance(real, RealData) else RealData(real)


def pick_images(batch: Any, image_key: str | int | None = None, transform: Callable | None = None) -> torch.Tensor:
    """Images from a batch: a tensor, an (images, labels, ...) sequence, or a dict (``image_key``)."""
    if transform is not None:
        return transform(batch)
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        key = (
            image_key
            if image_key is not None
            else next((k for k in ("image", "images", "img", "x") if k in batch), None)
        )
        if key is None or key not in batch:
            raise ValueError(f"real batches are dicts with keys {sorted(batch)}; pass image_key= to pick the images")
        return batch[key]
    if isinstance(batch, (list, tuple)) and batch:
        return batch[image_key if isinstance(image_key, int) else 0]
    raise ValueError(f"cannot find images in a real batch of type {type(batch).__name__}; pass transform=")


def pick_labels(batch: Any, label_key: str | int | None, count: int) -> torch.Tensor | None:
    """Integer class labels of a batch (``batch[label_key]``), or None without ``label_key``."""
    if label_key is None:
        return None
    try:
        labels = torch.as_tensor(batch[label_key])
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"real data: cannot read class labels batch[{label_key!r}] ({exc}); check label_key") from None
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != (count,):
        raise ValueError(
            f"real data: label_key={label_key!r} gives {labels.dtype} of shape {tuple(labels.shape)}, "
            f"not {count} integer class labels"
        )
    return labels.long()


class RealSource:
    """A real-data source resolved to something this module can slice: a map-style dataset (with
    the loader's collate_fn / workers when a loader was given) or an iterable loader."""

    def __init__(self, data: Any) -> None:
        self.loader: DataLoader | None = None
        self.dataset: Dataset | None = None
        self.collate_fn: Callable | None = None
        self.num_workers = 0
        if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
            self.dataset = ImageFolder(data)
            self.collate_fn = collate_same_size
        elif isinstance(data, DataLoader):
            if isinstance(data.dataset, IterableDataset):
                self.loader = data
            else:
                self.dataset = data.dataset
                self.collate_fn = data.collate_fn
                self.num_workers = data.num_workers
        elif isinstance(data, IterableDataset):
            self.loader = DataLoader(data, batch_size=None)
        elif isinstance(data, Dataset):
            self.dataset = data
        else:
            raise ValueError(
                f"real data must be a DataLoader, a Dataset, an image folder, a .npz / .pkl file, 'train', 'val' or a "
                f"callable returning a loader or dataset; got {type(data).__name__}"
            )

    def available(self) -> int | None:
        """Number of samples if known without iterating."""
        if self.dataset is not None:
            return len(self.dataset)  # type: ignore[arg-type]
        return None

    def fingerprint(self, num: int, image_key=None, transform=None) -> str:
        """Identity of the data for cache keys: type, size and a hash of a few evenly spaced samples."""
        if isinstance(self.dataset, ImageFolder):
            return self.dataset.fingerprint()
        digest = hashlib.sha256(type(self.dataset or self.loader.dataset).__qualname__.encode())
        if self.dataset is not None:
            n = len(self.dataset)  # type: ignore[arg-type]
            digest.update(str(n).encode())
            for i in sorted({0, n // 7, n // 3, n // 2, (2 * n) // 3, n - 1, min(num, n) - 1}):
                item = self.dataset[i]
                digest.update(
                    _as_bytes(pick_images(item, image_key, transform) if not isinstance(item, torch.Tensor) else item)
                )
        else:
            first = next(iter(self.loader))
            digest.update(_as_bytes(pick_images(first, image_key, transform)))
        return digest.hexdigest()

    def batches(
        self, num: int, batch_size: int, rank: int, world: int, image_key=None, transform=None, label_key=None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """(global sample indices, images, class labels or None) for this rank's share of the first
        ``num`` samples; labels are read only when ``label_key`` is given."""
        if self.dataset is not None:
            own = [
                list(range(s, min(s + batch_size, num)))
                for b, s in enumerate(range(0, num, batch_size))
                if b % world == rank
            ]
            loader = DataLoader(
                self.dataset, batch_sampler=own, collate_fn=self.collate_fn, num_workers=self.num_workers
            )
            for idx, batch in zip(own, loader):
                labels = pick_labels(batch, label_key, len(idx))
                yield torch.tensor(idx, dtype=torch.int64), pick_images(batch, image_key, transform), labels
            return
        # Iterable data cannot be indexed: every rank iterates and keeps its own batches.
        seen = 0
        for b, batch in enumerate(self.loader):  # type: ignore[arg-type]
            if seen >= num:
                break
            images = pick_images(batch, image_key, transform)
            take = min(images.shape[0], num - seen)
            if b % world == rank:
                labels = pick_labels(batch, label_key, images.shape[0])
                yield (
                    torch.arange(seen, seen + take, dtype=torch.int64),
                    images[:take],
                    None if labels is None else labels[:take],
                )
            seen += take


def _as_bytes(x: Any) -> bytes:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().contiguous().numpy().tobytes()
    return np.asarray(x).tobytes()


def count_available(source: RealSource, num_real: int | None, image_key=None, transform=None) -> int:
    """Resolve how many real samples to use (``num_real`` or all); raise if there are none."""
    available = source.available()
    if available is None:  # iterable: count by iterating once (cheap relative to feature extraction)
        available = sum(pick_images(b, image_key, transform).shape[0] for b in source.loader)  # type: ignore[union-attr]
    if available == 0:
        raise ValueError("the real data is empty: reference statistics need at least 2 real samples")
    if num_real is None:
        return available
    if num_real > available:
        raise ValueError(f"num_real={num_real} but the real data holds only {available} samples")
    return num_real
