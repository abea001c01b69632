"""Reference files of other tools, read safely: which of their keys serve which metric.

========================  =============================================  ==============================================
format                    file (the tool's code that writes / reads it)  keys -> slot (metric)
========================  =============================================  ==============================================
``"adm"``                 guided-diffusion reference / sample batch      ``mu``/``sigma`` -> ``inception`` (FID),
                          ``.npz`` (``evaluations/evaluator.py``:        ``mu_s``/``sigma_s`` -> ``inception-spatial``
                          ``read_activations``, ``read_statistics``)     (sFID), ``arr_0`` (uint8 NHWC images) -> every
                                                                         other slot (precision / recall, KID, IS, ...)
``"edm2"``                NVlabs/edm2 ``calculate_metrics.py ref``       ``fid`` -> ``inception`` (FID), ``fd_dinov2``
                          ``.pkl`` (``save_stats`` / ``load_stats``)     -> ``dinov2`` (FD_DINOv2), ``num_images`` -> n
``"lightning-fid"``       ``lightning-fid stats`` / ``Statistics.save``  ``mu``/``sigma``/``n`` -> the one network its
                                                                         ``metadata`` records (checked)
``"edm"``                 NVlabs/edm ``fid.py ref``: ``np.savez``        ``mu``/``sigma`` -> the one moments slot
``"pytorch-fid"``         pytorch-fid ``--save-stats`` (and TTUR's       ``mu``/``sigma`` -> the one moments slot
                          files): ``np.savez_compressed``
``"clean-fid"``           clean-fid's stats folder, named                ``mu``/``sigma`` -> the one moments slot
                          ``{name}_{mode}[_{model}]_{split}_{res}.npz``
========================  =============================================  ==============================================

EDM's, pytorch-fid's and clean-fid's files hold the same two arrays; they are told apart by clean-fid's
file naming (``cleanfid/fid.py``, ``make_custom_stats``) and by compression (EDM writes ``np.savez``,
pytorch-fid and clean-fid ``np.savez_compressed``), which is all the bytes say. ``.npz`` files are read
with ``allow_pickle=False``; a ``.pkl`` only through :mod:`lightning_fid.engine._unpickle`.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_fid.engine._image_files import NpzImages
from lightning_fid.engine._stats import Statistics, load_statistics, validate_statistics
from lightning_fid.engine._unpickle import load_pickle_safely

FORMATS = ("lightning-fid", "adm", "edm", "edm2", "pytorch-fid", "clean-fid")
#: the role of a file's only mean and covariance: whichever single network reads moments
ANY = "*"
#: clean-fid's reference names (cleanfid/features.py get_reference_statistics, cleanfid/fid.py make_custom_stats)
CLEAN_FID_NAME = re.compile(r"^.+_(clean|legacy_tensorflow|legacy_pytorch)(_clip_vit_b_32)?_[^_]+_[^_]+\.npz$")
#: what each role's statistics are and where a reference for it comes from (for messages)
ROLES = {
    "inception": ("Inception pool features (FID)", "mu/sigma of any reference file, or fid in an EDM2 .pkl"),
    "inception-spatial": (
        "spatial Inception features (sFID)",
        "an ADM reference batch with mu_s/sigma_s (lightning-fid stats --format adm)",
    ),
    "inception-logits": ("Inception logits (Inception Score)", "the real images"),
    "dinov2": ("DINOv2 features (FD_DINOv2)", "an EDM2 .pkl with fd_dinov2 (lightning-fid stats --format edm2)"),
    "clip": ("CLIP features", "lightning-fid stats --extractor clip"),
}
#: the TF Inception graph's pool and spatial features: what ADM's and EDM2's Inception statistics are
_TF_INCEPTION = {"inception": ("inception", "features"), "inception-spatial": ("inception", "spatial")}


def is_reference_file(real: Any) -> bool:
    """True when ``real`` names a reference file (``.npz`` or ``.pkl``) rather than images or data."""
    return isinstance(real, (str, os.PathLike)) and Path(real).suffix.lower() in (".npz", ".pkl")


@dataclass
class ReferenceFile:
    """A reference file, parsed and checked: its statistics by role, the keys that hold them, its images.

    ``moments`` maps a role (the standard slot name whose features they summarise: ``"inception"``,
    ``"inception-spatial"``, ``"dinov2"``; or :data:`ANY` for a file with one mean and covariance) to
    checked float64 statistics whose metadata names the format, file and key. ``images`` are an ADM
    batch's ``arr_0``, read lazily.
    """

    path: Path
    format: str
    moments: dict[str, Statistics]
    keys: dict[str, str]
    images: NpzImages | None = None
    notes: dict[str, str] = field(default_factory=dict)  # role -> what the format says of its network

    @property
    def sha256(self) -> str:
        """SHA-256 of the file's bytes (computed once per file version in this process)."""
        return file_sha256(self.path)

    def describe(self, served: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The file's identity for protocol cards: format, path, SHA-256, keys and image count; ``served``
        maps slot names to what each one was served from."""
        out: dict[str, Any] = {"format": self.format, "file": str(self.path), "sha256": self.sha256}
        out["keys"] = {role: key for role, key in self.keys.items()}
        if self.images is not None:
            out["images"] = len(self.images)
        if served is not None:
            out["statistics"] = dict(served)
        return out


_SHA256: dict[tuple[str, int, int], str] = {}
_READ: dict[tuple[str, int, int], ReferenceFile] = {}


def _version(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, remembered per (path, size, modification time) in this process."""
    from lightning_fid.extractors.weights import sha256_of

    version = _version(Path(path))
    if version not in _SHA256:
        _SHA256[version] = sha256_of(Path(path))
    return _SHA256[version]


def read_reference_file(path: str | os.PathLike) -> ReferenceFile:
    """Parse and check a reference file of any supported format (see the module's table).

    Args:
        path: an ``.npz`` (ADM, EDM, pytorch-fid, clean-fid, lightning-fid) or ``.pkl`` (EDM2).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, of no known format, or holding statistics no covariance can have, naming
            the file and the key; a ``.pkl`` naming any global but numpy's array machinery (never run).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file not found: {path}")
    version = _version(path)
    if version not in _READ:
        read = _read_pkl(path) if path.suffix.lower() == ".pkl" else _read_npz(path)
        _READ.clear()  # one parsed file at a time: the check before training and the resolution share it
        _READ[version] = read
    return _READ[version]


def _moments(mu: Any, sigma: Any, n: int | None, source: str, keys: tuple[str, str]) -> Statistics:
    """Checked float64 statistics from a file's mean and covariance arrays."""
    for key, value in zip(keys, (mu, sigma)):
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf":
            kind = f"{value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__
            raise ValueError(f"{source}: {key} must be an array of real numbers, got {kind}")
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{source}: {keys[0]} has shape {mu.shape} and {keys[1]} {sigma.shape}; expected (d,) and (d, d)"
        )
    stats = Statistics(mu, sigma, n)
    validate_statistics(stats, source, keys)
    return stats


def _tf_inception(role: str) -> str:
    from lightning_fid.engine._networks import standard_identity

    return standard_identity(*_TF_INCEPTION[role])[0]


def _read_npz(path: Path) -> ReferenceFile:
    try:
        with np.load(path, allow_pickle=False) as f:  # lazy: a member is read when accessed
            names = set(f.files)
            arrays = {k: f[k] for k in ("mu", "sigma", "mu_s", "sigma_s") if k in names}
        with zipfile.ZipFile(path) as archive:
            compressed = any(i.compress_type != zipfile.ZIP_STORED for i in archive.infolist())
    except Exception as exc:  # not a zip, an object array (allow_pickle=False), a truncated member
        raise ValueError(f"cannot read statistics file {path}: {exc}") from exc
    if "arr_0" in names or "mu_s" in names or "sigma_s" in names:
        return _read_adm(path, names, arrays)
    if "mu" not in names or "sigma" not in names:
        found = sorted(names)
        if "feats" in names:
            raise ValueError(
                f"{path} holds {found}: clean-fid's KID features, which lightning_fid does not read; use the "
                "matching mu/sigma .npz, or the image folder itself"
            )
        raise ValueError(
            f"{path} holds {found}, but a statistics file needs 'mu' and 'sigma' (or an ADM batch: arr_0 images)"
        )
    stats = load_statistics(path)  # n, metadata and per-class arrays of our own files; all checked
    if {"n", "metadata"} & names:
        fmt, note = "lightning-fid", ""
    elif CLEAN_FID_NAME.match(path.name.lower()):
        mode = CLEAN_FID_NAME.match(path.name.lower()).group(1)  # type: ignore[union-attr]
        fmt, note = "clean-fid", f"clean-fid's name says mode {mode!r}"
        stats.metadata["clean_fid_mode"] = mode
    elif compressed:
        fmt, note = "pytorch-fid", "pytorch-fid's layout: its own resize and normalisation, or TTUR's TF graph"
    else:
        fmt, note = "edm", "EDM's layout: NVIDIA's port of the TF Inception graph"
    stats.metadata.update(format=fmt, file=str(path), key="mu/sigma")
    return ReferenceFile(path, fmt, {ANY: stats}, {ANY: "mu/sigma"}, notes={ANY: note} if note else {})


def _read_adm(path: Path, names: set[str], arrays: dict[str, np.ndarray]) -> ReferenceFile:
    """guided-diffusion's batch: ``read_statistics`` takes mu, sigma, mu_s, sigma_s when ``mu`` is present,
    else computes both from ``read_activations`` of ``arr_0``; so do we, per missing pair."""
    moments, keys = {}, {}
    for role, (m, s) in (("inception", ("mu", "sigma")), ("inception-spatial", ("mu_s", "sigma_s"))):
        if m in arrays or s in arrays:
            if not (m in arrays and s in arrays):
                raise ValueError(f"{path} holds {'/'.join(sorted({m, s} & names))} without {m if s in names else s}")
            stats = _moments(arrays[m], arrays[s], None, f"{path} ({m}/{s})", (m, s))
            stats.metadata.update(format="adm", file=str(path), key=f"{m}/{s}", extractor=_tf_inception(role))
            moments[role], keys[role] = stats, f"{m}/{s}"
    images = NpzImages(path) if "arr_0" in names else None
    if images is not None:
        keys["images"] = "arr_0"
    return ReferenceFile(path, "adm", moments, keys, images, {r: "the TF Inception graph, as ADM" for r in moments})


def _read_pkl(path: Path) -> ReferenceFile:
    """NVlabs/edm2 ``save_stats``: ``{'num_images': int, 'fid': {'mu', 'sigma'}, 'fd_dinov2': {'mu', 'sigma'}}``."""
    obj = load_pickle_safely(path)
    if not isinstance(obj, dict) or not {"fid", "fd_dinov2"} & set(obj):
        held = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} holds {held}: an EDM2 reference .pkl is a dict with 'fid' and/or 'fd_dinov2'")
    n = obj.get("num_images")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2):
        raise ValueError(f"{path}: num_images must be an integer >= 2, got {n!r}")
    moments, keys, notes = {}, {}, {}
    for key, role in (("fid", "inception"), ("fd_dinov2", "dinov2")):
        if key not in obj:
            continue
        entry = obj[key]
        if not isinstance(entry, dict) or not {"mu", "sigma"} <= set(entry):
            raise ValueError(f"{path}: {key} must be a dict with 'mu' and 'sigma', got {entry!r:.80}")
        stats = _moments(entry["mu"], entry["sigma"], n, f"{path} ({key})", (f"{key}.mu", f"{key}.sigma"))
        stats.metadata.update(format="edm2", file=str(path), key=key)
        if role == "inception":  # EDM2's InceptionV3Detector: NVIDIA's port of the TF graph
            stats.metadata["extractor"] = _tf_inception(role)
        else:
            notes[role] = "EDM2's DINOv2Detector: ViT-L/14, resize_mode='torch' unless its maker chose 'pil'"
        moments[role], keys[role] = stats, key
    return ReferenceFile(path, "edm2", moments, keys, notes=notes)
