"""The standard networks, loaded once per process and shared by every evaluation that asks for them.

Keyed by the network's identity (which network, which weights file, which options) and held weakly:
two callbacks on one trainer, or a callback and a script, share one loaded Inception-v3 for as long
as either uses it, without knowing of each other.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

from torch import nn

from lightning_fid.extractors.base import Frozen
from lightning_fid.extractors.inception import SPATIAL_DIM

#: Inception-v3's unbiased logits (the TF graph's 1008 classes), Inception Score's input
LOGITS_DIM = 1008
#: the dimension of each named output besides a network's features (spatial: sFID's 7 x 17 x 17)
OUTPUT_DIMS = {"logits": LOGITS_DIM, "spatial": SPATIAL_DIM}


def standard_identity(network: str, output: str = "features", **options: Any) -> tuple[str, int]:
    """(name, feature dimension) of a standard network's ``output`` ("features", or Inception's
    "logits" / "spatial"), known without loading its weights; ``options`` as for :func:`standard_network`
    (DINOv2's ``resize`` is part of its name).

    Raises:
        ValueError: an output the network does not have.
        KeyError: an unknown network.
    """
    from lightning_fid.extractors import CLIP, DINOv2, InceptionV3

    if network == "dinov2":
        name, dim = DINOv2.identity_name(options.get("resize", "pil")), 1024
    else:
        name, dim = {"inception": (InceptionV3.name, 2048), "clip": (CLIP.name, 768)}[network]
    if output == "features":
        return name, dim
    if network != "inception" or output not in OUTPUT_DIMS:
        raise ValueError(f"the standard {network} network has no output {output!r}")
    return f"{name}-{output}", OUTPUT_DIMS[output]


_LOADED: weakref.WeakValueDictionary[tuple[str, str, str], Frozen] = weakref.WeakValueDictionary()


def _build(network: str, weights_path: Any, options: dict[str, Any]) -> nn.Module:
    from lightning_fid.extractors import CLIP, DINOv2, InceptionV3

    if network == "inception":  # pool features, IS logits and sFID's spatial features in one forward pass
        return InceptionV3(weights_path, logits=True, spatial=True, **options)
    if network == "clip":
        return CLIP(weights_path, **options)
    if network == "dinov2":
        return DINOv2(weights_path, **options)
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


def standard_network(network: str, weights_path: str | os.PathLike | None = None, **options: Any) -> Frozen:
    """The loaded standard ``network`` ("inception", "clip", "dinov2"), from ``weights_path`` or the
    verified cache; loaded at the first request in this process and shared after that, for as long as
    the file it would load is the same one. ``options`` go to the network's constructor (e.g.
    ``resize="torch"`` for DINOv2) and key the sharing: other options, another network.

    Raises:
        ValueError: an unknown network, or an option its constructor refuses.
    """
    tag = repr(sorted(options.items()))
    key = (network, _file_identity(network, weights_path), tag)
    found = _LOADED.get(key) if key[1] else None
    if found is None:
        found = Frozen(_build(network, weights_path, options))
        _LOADED[(network, _file_identity(network, weights_path), tag)] = found
    return found
