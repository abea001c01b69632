"""A folder's reference statistics in this package's format or another tool's (``lightning-fid stats``).

Each format is computed the way its tool computes it, so the file scores like one the tool made:

- ``"lightning-fid"``: ``mu``, ``sigma``, ``n`` and the network's identity, for any standard network;
- ``"pytorch-fid"``: Inception with pytorch-fid's own reading (``InceptionV3(preprocess="pytorch-fid")``:
  its bilinear resize of x / 255, then 2x - 1), not the TF graph's, since pytorch-fid computes the
  generated side that way and its numbers move with the preprocessing; ``--extractor`` must be inception;
- ``"edm2"``: ``fid`` on the TF-ported Inception (EDM2's ``InceptionV3Detector``) and ``fd_dinov2`` on
  DINOv2 ViT-L/14 with EDM2's default ``resize_mode='torch'``, when DINOv2 weights are at hand (given,
  or in the cache: this command never downloads 1.2 GB unasked); without them, ``fid`` only, and it
  says so;
- ``"adm"``: the real images themselves as ``arr_0`` plus pool and spatial statistics of the TF-ported
  Inception (``mu``/``sigma``, ``mu_s``/``sigma_s``), all images of one size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lightning_fid.engine._image_files import ImageFolder, read_image
from lightning_fid.engine._real import RealOptions
from lightning_fid.engine._stats import Statistics, identity_metadata
from lightning_fid.engine._writers import write_adm, write_edm2, write_pytorch_fid

STATS_FORMATS = ("lightning-fid", "adm", "edm2", "pytorch-fid")
#: the file name ending each format's tool reads
SUFFIXES = {"lightning-fid": ".npz", "adm": ".npz", "edm2": ".pkl", "pytorch-fid": ".npz"}


def _statistics(folder: str, slots: list, options: RealOptions, device: torch.device) -> dict[str, Statistics]:
    from lightning_fid.engine._reference import resolve_reference

    for slot in slots:
        slot.module.to(device)
    return resolve_reference(folder, slots, options, device=device, progress=True).stats


def _dinov2_at_hand(weights: Mapping[str, Any]) -> bool:
    from lightning_fid.extractors.weights import PUBLISHED, cache_dir

    return weights.get("dinov2") is not None or (cache_dir() / PUBLISHED["dinov2"].filename).is_file()


def _one_size(folder: str, count: int | None) -> tuple[int, int, int, int]:
    """(N, H, W, 3) of the first ``count`` images, read from their headers; refuses mixed sizes."""
    files = ImageFolder(folder).files[:count]
    sizes: dict[tuple[int, int], Path] = {}
    for path in files:
        with Image.open(path) as im:
            sizes.setdefault(im.size, path)
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h} ({p.name})" for (w, h), p in list(sizes.items())[:3])
        raise ValueError(f"--format adm stores the images as one array (arr_0), but {folder} mixes sizes: {shown}")
    (width, height), _ = sizes.popitem()
    return len(files), height, width, 3


def _batches(folder: str, count: int, batch_size: int) -> Iterator[np.ndarray]:
    files = ImageFolder(folder).files[:count]
    for start in range(0, count, batch_size):
        yield np.stack([read_image(p).permute(1, 2, 0).numpy() for p in files[start : start + batch_size]])


def export_reference(
    folder: str,
    output: str | os.PathLike,
    fmt: str = "lightning-fid",
    *,
    extractor: str = "inception",
    weights: Mapping[str, Any] | None = None,
    options: RealOptions | None = None,
    device: torch.device | str = "cpu",
) -> list[str]:
    """Compute the reference statistics of an image folder and write them in ``fmt``.

    Args:
        folder: the images (sorted by path; ``options.num_real`` selects the first N).
        output: the file to write (``.pkl`` for ``edm2``, ``.npz`` otherwise).
        fmt: one of :data:`STATS_FORMATS`.
        extractor: the network of the ``lightning-fid`` format ("inception", "clip", "dinov2").
        weights: explicit weights files per standard network.
        options: how the images are read (batch size, count).
        device: where the networks run.

    Returns:
        Lines saying what was written (and what was left out, e.g. ``fd_dinov2`` without DINOv2 weights).

    Raises:
        ValueError: an unknown format, a wrong file ending, a format that fixes another network, mixed
            image sizes for ``adm``, or anything the real pass refuses.
    """
    from lightning_fid.engine._networks import standard_network
    from lightning_fid.engine._slots import build_slots, make_slot
    from lightning_fid.extractors import InceptionV3
    from lightning_fid.metrics import resolve_metrics

    if fmt not in STATS_FORMATS:
        raise ValueError(f"--format {fmt!r}; choose from {STATS_FORMATS}")
    if not str(output).endswith(SUFFIXES[fmt]):
        raise ValueError(f"-o {output}: --format {fmt} files end in {SUFFIXES[fmt]}")
    if fmt != "lightning-fid" and extractor != "inception":
        raise ValueError(
            f"--format {fmt} fixes its networks; --extractor {extractor} applies to --format lightning-fid"
        )
    if not Path(folder).is_dir():
        raise ValueError(f"{folder} is not a folder of images")
    weights, options, device = dict(weights or {}), options or RealOptions(input_range="uint8"), torch.device(device)
    if fmt == "lightning-fid" or fmt == "pytorch-fid":
        network = (
            InceptionV3(weights.get("inception"), preprocess="pytorch-fid")
            if fmt == "pytorch-fid"
            else standard_network(extractor, weights.get(extractor))
        )
        slot = make_slot(extractor, network, moments=True, keep_features=False)
        stats = _statistics(folder, [slot], options, device)[slot.name]
        if fmt == "pytorch-fid":
            write_pytorch_fid(output, stats)
        else:
            stats.metadata = {**identity_metadata(slot.info), "source": str(folder)}
            stats.save(output)
        return [f"wrote {output}: {stats.n} images, {stats.dim}-d {slot.info.name} features ({fmt} format)"]
    shape = _one_size(folder, options.num_real) if fmt == "adm" else None
    names = ["fid", "sfid"] if fmt == "adm" else ["fid"] + (["fd_dinov2"] if _dinov2_at_hand(weights) else [])
    slots, slot_of = build_slots(resolve_metrics(names), weights=weights, options={"dinov2": {"resize": "torch"}})
    stats = _statistics(folder, slots, options, device)
    by_name = {name: stats[slot] for name, slot in zip(names, slot_of)}
    n = by_name["fid"].n
    if fmt == "adm":
        write_adm(output, _batches(folder, shape[0], options.batch_size), shape, by_name["fid"], by_name["sfid"])
        return [f"wrote {output}: arr_0 ({shape[0]} x {shape[1]} x {shape[2]} x 3 uint8), mu/sigma, mu_s/sigma_s"]
    write_edm2(output, {name: s for name, s in by_name.items()}, n)
    lines = [f"wrote {output}: {n} images, {' and '.join(by_name)} statistics (edm2 format)"]
    if "fd_dinov2" not in by_name:
        lines.append(
            "fd_dinov2 not written: no DINOv2 weights at hand (run lightning-fid download dinov2, or pass "
            "--dinov2-weights); EDM2 then skips FD_DINOv2 for this reference"
        )
    return lines
