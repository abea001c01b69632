"""The standard networks, loaded once per process and shared by every evaluation that asks for them.

Keyed by the network's identity (which network, which weights file) and held weakly: two callbacks
on one trainer, or a callback and a script, share one loaded Inception-v3 for as long as either
uses it, without knowing of each other.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

from torch import nn

from lightning_fid.extractors.base import Frozen

#: Inception-v3's unbiased logits (the TF graph's 1008 classes), Inception Score's input
LOGITS_DIM = 1008


def standard_identity(network: str) -> tuple[str, int]:
    """(name, feature dimension) of a standard network, known without loading its weights."""
    from lightning_fid.extractors import CLIP, DINOv2, InceptionV3

    return {"inception": (InceptionV3.name, 2048), "clip": (CLIP.name, 768), "dinov2": (DINOv2.name, 1024)}[network]


_LOADED: weakref.WeakValueDictionary[tuple[str, str], Frozen] = weakref.WeakValueDictionary()


def _build(network: str, weights_path: Any) -> nn.Module:
    from lightning_fid.extractors import CLIP, DINOv2, InceptionV3

    if network == "inception":  # with its logits head: pool features and IS logits in one forward pass
        return InceptionV3(weights_path, logits=True)
    if network == "clip":
        return CLIP(weights_path)
    if network == "dinov2":
        return DINOv2(weights_path)
    raise ValueError(f"unknown standard network {network!r}")


def _file_identity(network: str, weights_path: str | os.PathLike | None) -> str:
    """Which file a standard network would load now (explicit path, else the cache folder as the
    environment sets it), with its size and modification time; "" when none is there yet."""
    from lightning_fid.extractors.weights import PUBLISHED, cache_dir

    path = Path(weights_path) if weights_path is not None else cache_dir() / PUBLISHED[network].filename
    if not path.is_file():
        return ""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def standard_network(network: str, weights_path: str | os.PathLike | None = None) -> Frozen:
    """The loaded standard ``network`` ("inception", "clip", "dinov2"), from ``weights_path`` or the
    verified cache; loaded at the first request in this process and shared after that, for as long as
    the file it would load is the same one."""
    key = (network, _file_identity(network, weights_path))
    found = _LOADED.get(key) if key[1] else None
    if found is None:
        found = Frozen(_build(network, weights_path))
        _LOADED[(network, _file_identity(network, weights_path))] = found
    return found
