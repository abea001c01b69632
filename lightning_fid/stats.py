"""Feature statistics that merge exactly across batches and processes, and their .npz files.

FID needs only the mean and covariance of the features. We keep the float64 count, sum and sum of
outer products: these add up across batches and ranks, so one all-reduce merges every process's
statistics, and the result does not depend on how the samples were split.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_fid._validation import ArrayLike, as_tensor, check_finite
from lightning_fid.distributed import all_reduce_packed


@dataclass
class Statistics:
    """Mean and covariance of a feature set, as stored in pytorch-fid / EDM / lightning_fid .npz files."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None  # unknown for files written by other tools
    metadata: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``mu``, ``sigma``, ``n`` and JSON metadata atomically (readable by pytorch-fid)."""
        arrays = {"mu": self.mu, "sigma": self.sigma}
        if self.n is not None:
            arrays["n"] = np.asarray(self.n, dtype=np.int64)
        arrays["metadata"] = np.asarray(json.dumps(self.metadata, sort_keys=True))
        _atomic_savez(Path(path), arrays)


def load_statistics(path: str | os.PathLike) -> Statistics:
    """Read a statistics .npz (ours, pytorch-fid's or EDM's): needs ``mu`` and ``sigma`` arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # zip, pickle and format errors all mean "not a usable .npz"
        raise ValueError(f"cannot read statistics file {path}: {exc}") from exc
    if "mu" not in arrays or "sigma" not in arrays:
        raise ValueError(f"{path} holds {sorted(arrays)}, but a statistics file needs 'mu' and 'sigma'")
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    n = int(arrays["n"]) if "n" in arrays else None
    metadata = json.loads(str(arrays["metadata"])) if "metadata" in arrays else {}
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu has shape {mu.shape} and sigma {sigma.shape}; expected (d,) and (d, d)")
    return Statistics(mu=mu, sigma=sigma, n=n, metadata=metadata)


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz through a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class FeatureMoments:
    """Float64 count, sum and sum of outer products of D-dimensional features.

    ``update`` adds a batch, ``merge`` adds another instance, ``all_reduce`` sums over all ranks
    with a single collective; ``mean`` and ``cov`` (unbiased, N-1) are what FID consumes.
    """

    def __init__(self, dim: int, device: torch.device | str | None = None) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.n = torch.zeros((), dtype=torch.float64, device=device)
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    @property
    def count(self) -> int:
        """Number of samples accumulated."""
        return int(self.n.item())

    def to(self, device: torch.device | str) -> FeatureMoments:
        """Move the accumulators to ``device`` (in place); returns self."""
        self.n, self.sum, self.outer = self.n.to(device), self.sum.to(device), self.outer.to(device)
        return self

    def update(self, features: ArrayLike) -> FeatureMoments:
        """Add a (B, D) batch of features; returns self."""
        f = as_tensor(features, "features")
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"features must have shape (batch, {self.dim}), got {tuple(f.shape)}")
        check_finite(f, "features")
        f = f.to(device=self.sum.device, dtype=torch.float64)
        self.n += f.shape[0]
        self.sum += f.sum(dim=0)
        self.outer.addmm_(f.T, f)
        return self

    def merge(self, other: FeatureMoments) -> FeatureMoments:
        """Add another instance's statistics (same dim) into this one; returns self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge moments of dim {other.dim} into dim {self.dim}")
        self.n += other.n.to(self.n.device)
        self.sum += other.sum.to(self.sum.device)
        self.outer += other.outer.to(self.outer.device)
        return self

    def all_reduce(self, group=None) -> FeatureMoments:
        """Sum the statistics of every rank with one all-reduce; no-op without torch.distributed."""
        self.n, self.sum, self.outer = all_reduce_packed([self.n, self.sum, self.outer], group)
        return self

    def reset(self) -> None:
        """Zero all accumulators."""
        self.n.zero_()
        self.sum.zero_()
        self.outer.zero_()

    @property
    def mean(self) -> torch.Tensor:
        """Feature mean, float64 (D,)."""
        if self.count < 1:
            raise ValueError("no features accumulated: the mean is undefined")
        return self.sum / self.n

    @property
    def cov(self) -> torch.Tensor:
        """Unbiased feature covariance (divides by N-1, as pytorch-fid and torch-fidelity), float64 (D, D)."""
        n = self.count
        if n < 2:
            raise ValueError(f"the covariance needs at least 2 samples, got {n}")
        mu = self.mean
        cov = (self.outer - n * torch.outer(mu, mu)) / (n - 1)
        return (cov + cov.T) / 2  # exact symmetry for eigh

    def statistics(self, metadata: dict[str, Any] | None = None) -> Statistics:
        """Mean, covariance and count as numpy arrays."""
        return Statistics(
            mu=self.mean.cpu().numpy(), sigma=self.cov.cpu().numpy(), n=self.count, metadata=dict(metadata or {})
        )

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        """Write ``mu``, ``sigma``, ``n`` and ``metadata`` to an .npz that pytorch-fid and EDM can read."""
        self.statistics(metadata).save(path)

    @classmethod
    def from_tensors(cls, n: torch.Tensor, sum: torch.Tensor, outer: torch.Tensor) -> FeatureMoments:
        """Wrap existing accumulators without copying (updates write into them in place)."""
        m = cls.__new__(cls)
        m.dim, m.n, m.sum, m.outer = sum.shape[0], n, sum, outer
        return m

    @classmethod
    def from_statistics(cls, stats: Statistics) -> FeatureMoments:
        """Rebuild the accumulators from mean, covariance and count (exact up to rounding)."""
        if stats.n is None:
            raise ValueError("these statistics carry no sample count 'n', so they cannot be merged further")
        m = cls(stats.mu.shape[0])
        mu = torch.from_numpy(stats.mu).to(torch.float64)
        n = float(stats.n)
        m.n.fill_(n)
        m.sum = mu * n
        m.outer = torch.from_numpy(stats.sigma).to(torch.float64) * (n - 1) + n * torch.outer(mu, mu)
        return m

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureMoments:
        """Load a file written by :meth:`save` (must contain ``n``)."""
        return cls.from_statistics(load_statistics(path))
