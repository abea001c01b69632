"""Exact identity of reference data: a SHA-256 of everything the real pass reads.

The statistics cache and the in-process reference table serve a reference only under a key that
determines it. For the data part of that key nothing is sampled: every image is hashed as the networks
will see it (8-bit, after the user's loader, ``image_key`` / ``transform`` and the range
quantisation) together with its class label, in global sample order. An image folder is hashed by
its files' bytes (no decoding) and the Pillow version that decodes them. Each rank hashes its own
share of the batches, inside the same agreement as the real pass (a rank that fails to read fails
every rank), and one ordered gather combines the digests: every rank gets the same fingerprint.
``RealData(reference_id=...)`` replaces this pass by the user's name for the data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import PIL
import torch

from lightning_fid.engine._distributed import agreed, gather_in_order, rank_and_world
from lightning_fid.engine._image_files import ImageFolder
from lightning_fid.engine._images import REAL, to_uint8
from lightning_fid.engine._real import RealOptions, RealSource


def _batch_digests(
    source: RealSource, num: int, options: RealOptions, rank: int, world: int
) -> Iterator[tuple[int, bytes]]:
    """(first global index, SHA-256) of each of this rank's batches of the first ``num`` samples."""
    if isinstance(source.dataset, ImageFolder):  # the files' bytes: what the decoder reads
        files = source.dataset.files[:num]
        for b, start in enumerate(range(0, num, options.batch_size)):
            if b % world == rank:
                digest = hashlib.sha256()
                for path in files[start : start + options.batch_size]:
                    digest.update(str(path.relative_to(source.dataset.folder)).encode() + b"\0")
                    digest.update(path.read_bytes())
                yield start, digest.digest()
        return
    for index, images, labels in source.batches(
        num, options.batch_size, rank, world, options.image_key, options.transform, options.label_key
    ):
        declared = "uint8" if images.dtype == torch.uint8 else options.input_range
        u8 = to_uint8(images, declared, strict=True, source=REAL)
        digest = hashlib.sha256(str(tuple(u8.shape)).encode())
        digest.update(u8.cpu().contiguous().numpy().tobytes())
        if labels is not None:
            digest.update(labels.cpu().to(torch.int64).numpy().tobytes())
        yield int(index[0]), digest.digest()


def data_fingerprint(source: RealSource, num: int, options: RealOptions, device: torch.device) -> str:
    """SHA-256 of the first ``num`` real samples as read (a collective call: the same on every rank).

    Raises:
        ValueError: the data cannot be read (the same errors as the real pass, on every rank).
    """
    rank, world = rank_and_world()
    starts: list[int] = []
    digests: list[bytes] = []
    with agreed("reading the real data", device):
        for start, digest in _batch_digests(source, num, options, rank, world):
            starts.append(start)
            digests.append(digest)
    local = torch.from_numpy(np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 32).copy())
    ordered = gather_in_order(local.to(device), torch.tensor(starts, dtype=torch.int64, device=device))
    total = hashlib.sha256(f"{type(source.dataset or source.loader.dataset).__qualname__}:{num}".encode())
    if isinstance(source.dataset, ImageFolder):
        total.update(f"pillow-{PIL.__version__}".encode())
    total.update(ordered.cpu().numpy().tobytes())
    return total.hexdigest()
