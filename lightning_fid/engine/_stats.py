"""Feature statistics as metrics receive them and files store them (the accumulators that produce
them are :mod:`lightning_fid.engine._accumulators`).

:class:`Statistics` is the merged result for one set and one extractor: mean, covariance, the
  sample count (``None`` when unknown, e.g. a pytorch-fid file), the kept features if any, and
  metadata. It is what reference files, the cache and every metric function exchange.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_fid.engine._files import atomic_write
from lightning_fid.engine._validation import ArrayLike, check_finite


def _float64(x: ArrayLike | None) -> torch.Tensor | None:
    if x is None:
        return None
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float64)


def _metadata(arrays: dict[str, np.ndarray], source: str) -> dict[str, Any]:
    if "metadata" not in arrays:
        return {}
    try:
        metadata = json.loads(str(arrays["metadata"]))
    except ValueError as exc:
        raise ValueError(f"{source}: metadata is not valid JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{source}: metadata must be a JSON object, got {type(metadata).__name__}")
    return metadata


def _classes(arrays: dict[str, np.ndarray], source: str) -> dict[int, Statistics]:
    """Per-class statistics from ``class_n`` / ``class_mu`` / ``class_sigma``, checked."""
    if not any(k in arrays for k in ("class_n", "class_mu", "class_sigma")):
        return {}
    if not all(k in arrays for k in ("class_n", "class_mu", "class_sigma")):
        raise ValueError(f"{source}: per-class statistics need class_n, class_mu and class_sigma together")
    counts, mu, sigma = arrays["class_n"], arrays["class_mu"], arrays["class_sigma"]
    c = counts.shape[0] if counts.ndim == 1 else -1
    if c < 0 or mu.ndim != 2 or mu.shape[0] != c or sigma.shape != (c, mu.shape[1], mu.shape[1]):
        raise ValueError(
            f"{source}: class_n {counts.shape}, class_mu {mu.shape} and class_sigma {sigma.shape} do not "
            "fit (C,), (C, d), (C, d, d)"
        )
    out = {}
    for i in range(c):
        count = _count(counts[i], f"{source} class_n[{i}]")
        out[i] = Statistics(mu[i] if count >= 2 else None, sigma[i] if count >= 2 else None, count)
    return out


def _count(value: np.ndarray, source: str) -> int:
    value = np.asarray(value)
    ok = value.shape == () and value.dtype.kind in "iuf" and np.isfinite(value) and float(value) == int(value)
    if not ok or int(value) < 0:
        raise ValueError(f"{source}: n must be one non-negative integer sample count, got {value!r}")
    return int(value)


@dataclass
class Statistics:
    """One sample set's statistics for one extractor, identical on every rank once merged.

    ``mu`` / ``sigma`` are float64 tensors (FID), ``features`` the kept rows in global sample order
    (KID, CMMD), ``n`` the sample count or ``None`` when a file does not record it. Metrics keep
    their reference-side work in their own run state, never here.
    """

    mu: torch.Tensor | None = None
    sigma: torch.Tensor | None = None
    n: int | None = None
    features: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    classes: dict[int, Statistics] = field(default_factory=dict)  # per-class moments (per-class FID)
    # generated side with error bars: float64 (counts (G,), sums (G, d), outer sums (G, d, d)) per group i % G
    group_moments: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        self.mu = _float64(self.mu)
        self.sigma = _float64(self.sigma)
        if self.features is not None and not isinstance(self.features, torch.Tensor):
            self.features = torch.from_numpy(np.asarray(self.features))
        if self.n is not None:
            self.n = int(self.n)

    @property
    def dim(self) -> int:
        """Feature dimension."""
        if self.mu is not None:
            return int(self.mu.shape[0])
        if self.features is not None:
            return int(self.features.shape[1])
        for per_class in self.classes.values():
            if per_class.has_moments:
                return per_class.dim
        raise ValueError("empty statistics: neither moments nor features")

    @property
    def has_moments(self) -> bool:
        """True when mean and covariance are present (FID can use them)."""
        return self.mu is not None and self.sigma is not None

    def to(self, device: torch.device | str) -> Statistics:
        """A copy with every tensor on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        classes = {c: s.to(device) for c, s in self.classes.items()}
        return Statistics(
            move(self.mu), move(self.sigma), self.n, move(self.features), dict(self.metadata), classes=classes
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """numpy arrays for an .npz: ``mu``, ``sigma`` (if present), ``n`` (if known), ``features`` (if kept)."""
        out: dict[str, np.ndarray] = {}
        if self.has_moments:
            out.update(mu=self.mu.cpu().numpy(), sigma=self.sigma.cpu().numpy())
        if self.n is not None:
            out["n"] = np.asarray(self.n, dtype=np.int64)
        if self.features is not None:
            out["features"] = self.features.cpu().numpy()
        if self.classes:
            count = max(self.classes) + 1
            dim = next((s.dim for s in self.classes.values() if s.has_moments), 0)
            out["class_n"] = np.array([self.classes[c].n if c in self.classes else 0 for c in range(count)])
            out["class_mu"] = np.zeros((count, dim))
            out["class_sigma"] = np.zeros((count, dim, dim))
            for c, s in self.classes.items():
                if s.has_moments:
                    out["class_mu"][c] = s.mu.cpu().numpy()
                    out["class_sigma"][c] = s.sigma.cpu().numpy()
        out["metadata"] = np.asarray(json.dumps(self.metadata, sort_keys=True, default=str))
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], source: str = "statistics") -> Statistics:
        """Inverse of :meth:`to_arrays`; ``source`` names the file in errors.

        Raises:
            ValueError: any array of the wrong kind or shape, naming the file and the array.
        """
        for name in ("mu", "sigma", "features", "class_n", "class_mu", "class_sigma"):
            if name in arrays and arrays[name].dtype.kind not in "iuf":
                raise ValueError(f"{source}: {name} must hold real numbers, got dtype {arrays[name].dtype}")
        if "features" in arrays and arrays["features"].ndim != 2:
            raise ValueError(f"{source}: features must be 2-D (samples, dim), got shape {arrays['features'].shape}")
        n = _count(arrays["n"], source) if "n" in arrays else None
        stats = cls(arrays.get("mu"), arrays.get("sigma"), n, arrays.get("features"), _metadata(arrays, source))
        stats.classes = _classes(arrays, source)
        if stats.has_moments and (stats.mu.ndim != 1 or stats.sigma.shape != (stats.dim, stats.dim)):
            raise ValueError(
                f"{source}: mu has shape {tuple(stats.mu.shape)} and sigma {tuple(stats.sigma.shape)}; "
                "expected (d,) and (d, d)"
            )
        return stats

    def save(self, path: str | os.PathLike) -> None:
        """Write ``mu``, ``sigma``, ``n`` and JSON metadata atomically (readable by pytorch-fid and EDM)."""
        if not self.has_moments:
            raise ValueError("only statistics with a mean and covariance can be saved as a statistics file")
        arrays = {k: v for k, v in self.to_arrays().items() if k != "features"}
        with atomic_write(path, suffix=".npz") as tmp:
            np.savez(tmp, **arrays)


#: the arrays of a statistics .npz this module reads (kept features live in the cache only; an ADM
#: batch's images and spatial statistics are :mod:`lightning_fid.engine._formats`'s)
STATISTICS_KEYS = ("mu", "sigma", "n", "metadata", "class_n", "class_mu", "class_sigma")


def load_statistics(path: str | os.PathLike) -> Statistics:
    """Read the ``mu`` / ``sigma`` of a statistics .npz (ours, pytorch-fid's, EDM's, clean-fid's, or an ADM
    batch's pool statistics); :func:`lightning_fid.engine.read_reference_file` reads every key of every
    format.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an .npz, no ``mu`` / ``sigma``, or statistics no covariance can have.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:  # members are read on access: only these, not images
            names = list(f.files)
            arrays = {k: f[k] for k in names if k in STATISTICS_KEYS}
    except Exception as exc:  # zip, pickle and format errors all mean "not a usable .npz"
        raise ValueError(f"cannot read statistics file {path}: {exc}") from exc
    if "mu" not in arrays or "sigma" not in arrays:
        raise ValueError(f"{path} holds {sorted(names)}, but a statistics file needs 'mu' and 'sigma'")
    stats = Statistics.from_arrays(arrays, source=str(path))
    validate_statistics(stats, str(path))
    return stats


def validate_statistics(stats: Statistics, source: str, names: tuple[str, str] = ("mu", "sigma")) -> None:
    """Refuse statistics no covariance can have, naming ``source`` and the arrays (``names``: the file's
    keys for mean and covariance): a count below 2 or not an integer, non-finite values, an asymmetric
    or non-positive-semi-definite covariance (beyond rounding).

    Raises:
        ValueError: naming ``source``, the array and what is wrong with it.
    """
    from lightning_fid.metrics.fid import PSD_TOLERANCE, check_psd_eigenvalues, check_symmetric

    try:
        if stats.n is not None and stats.n < 2:
            raise ValueError(f"n = {stats.n}: statistics need at least 2 samples")
        if not stats.has_moments:
            return
        for name, tensor in zip(names, (stats.mu, stats.sigma)):
            check_finite(tensor, name)
        check_symmetric(stats.sigma, names[1])
        symmetric = (stats.sigma + stats.sigma.T) / 2
        if int(torch.linalg.cholesky_ex(symmetric)[1]) != 0:  # not positive definite: look closer
            # Rank-deficient covariances (fewer samples than dimensions) are common: accept them without
            # an eigendecomposition when S + PSD_TOLERANCE * r * I is positive definite, r a Rayleigh
            # quotient (<= the largest eigenvalue, so this is never looser than the exact check below).
            shift = PSD_TOLERANCE * _rayleigh_quotient(symmetric)
            eye = torch.eye(symmetric.shape[0], dtype=symmetric.dtype, device=symmetric.device)
            if shift <= 0 or int(torch.linalg.cholesky_ex(symmetric + shift * eye)[1]) != 0:
                check_psd_eigenvalues(torch.linalg.eigvalsh(symmetric), names[1])
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def _rayleigh_quotient(s: torch.Tensor, steps: int = 30) -> float:
    """v^T S v for v after ``steps`` power iterations from a fixed start: a lower bound of S's largest
    eigenvalue (any unit vector's quotient is), close to it after a few steps."""
    v = torch.ones(s.shape[0], dtype=s.dtype, device=s.device)
    for _ in range(steps):
        w = s @ v
        norm = torch.linalg.vector_norm(w)
        if not bool(norm > 0):
            return 0.0
        v = w / norm
    return float(v @ (s @ v))


def identity_metadata(info: Any) -> dict[str, str]:
    """What statistics record of the network that made them (an ``ExtractorInfo``): its name (with its
    preprocessing), a hash of its tensors and a hash of its configuration."""
    return {"extractor": info.name, "weights_sha256": info.fingerprint, "extractor_config": info.config}


def check_identity(
    stats: Statistics,
    extractor: str,
    dim: int,
    fingerprint: str | None,
    source: str,
    config: str | None = None,
    hint: str | None = None,
) -> None:
    """Refuse statistics made by another network than the one scored against them.

    Statistics files we write record the extractor's name (preprocessing included) and its weights'
    hash; when they disagree with ``extractor`` / ``fingerprint``, or the dimension differs, the
    numbers would not be comparable, so this raises. A file that records nothing (pytorch-fid's,
    EDM's) cannot be checked beyond its dimension: a warning says so, with ``hint`` (what the file's
    format says of the network that made it) when given.

    Raises:
        ValueError: naming the file, what it records and what this run computes.
    """
    if stats.dim != dim:
        raise ValueError(
            f"{source} holds {stats.dim}-d statistics but {extractor} gives {dim}-d features: it was "
            f"computed with another network{f' ({hint})' if hint else ''}"
        )
    recorded = stats.metadata.get("extractor")
    if recorded is not None and recorded != extractor:
        raise ValueError(
            f"{source} holds statistics of {recorded} features, but this run computes {extractor}'s: "
            "they are not comparable; compute the reference with the same network and preprocessing"
        )
    weights = stats.metadata.get("weights_sha256")
    if weights is not None and fingerprint is not None and weights != fingerprint:
        raise ValueError(
            f"{source} was computed with other {extractor} weights (sha256 {str(weights)[:12]}...) than "
            f"this run's ({fingerprint[:12]}...); recompute it with the same weights"
        )
    recorded_config = stats.metadata.get("extractor_config")
    if recorded_config is not None and config is not None and recorded_config != config:
        raise ValueError(
            f"{source} was computed with {extractor} in another configuration (its options or code "
            "differ from this run's network); recompute it with this network"
        )
    if recorded is None:
        warnings.warn(
            f"{source} does not record which network computed it{f' ({hint})' if hint else ''}: make sure "
            f"it holds {extractor} statistics (same network, weights and preprocessing), or the value is not "
            "comparable",
            stacklevel=3,
        )
