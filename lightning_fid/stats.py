"""Feature statistics: how a sample set's features accumulate, merge across ranks, and are stored.

Three types, one idea (what a metric needs from a sample set):

- :class:`FeatureMoments` accumulates the float64 count, sum and sum of outer products. These add up
  across batches and ranks, so one all-reduce merges every process's moments and the result does
  not depend on how the samples were split. FID needs nothing more.
- :class:`FeatureBank` keeps the feature rows themselves with their global sample indices and
  gathers them into global order (KID, CMMD and other sample-based metrics).
- :class:`Statistics` is the merged result for one set and one extractor: mean, covariance, the
  sample count (``None`` when unknown, e.g. a pytorch-fid file), the kept features if any, and
  metadata. It is what reference files, the cache and every metric function exchange.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_fid._validation import ArrayLike, as_tensor, check_finite
from lightning_fid.distributed import Group, all_reduce_packed, default_index, gather_in_order
from lightning_fid.files import atomic_write


def _float64(x: ArrayLike | None) -> torch.Tensor | None:
    if x is None:
        return None
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float64)


def _count(value: np.ndarray, source: str) -> int:
    if value.shape != () or value.dtype.kind not in "iuf" or float(value) != int(value):
        raise ValueError(f"{source}: n must be one integer sample count, got {value!r}")
    return int(value)


@dataclass
class Statistics:
    """One sample set's statistics for one extractor, identical on every rank once merged.

    ``mu`` / ``sigma`` are float64 tensors (FID), ``features`` the kept rows in global sample order
    (KID, CMMD), ``n`` the sample count or ``None`` when a file does not record it. ``prepared``
    holds reference-side work a metric caches once per run (e.g. FID's factor of ``sigma``).
    """

    mu: torch.Tensor | None = None
    sigma: torch.Tensor | None = None
    n: int | None = None
    features: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    prepared: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    classes: dict[int, Statistics] = field(default_factory=dict)  # per-class moments (per-class FID)

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
        raise ValueError("empty statistics: neither moments nor features")

    @property
    def has_moments(self) -> bool:
        """True when mean and covariance are present (FID can use them)."""
        return self.mu is not None and self.sigma is not None

    def to(self, device: torch.device | str) -> Statistics:
        """A copy with every tensor on ``device`` (``prepared`` work is dropped: recompute there)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        classes = {c: s.to(device) for c, s in self.classes.items()}
        return Statistics(move(self.mu), move(self.sigma), self.n, move(self.features), dict(self.metadata),
                          classes=classes)  # fmt: skip

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
        """Inverse of :meth:`to_arrays`; ``source`` names the file in errors."""
        for name in ("mu", "sigma", "features"):
            if name in arrays and arrays[name].dtype.kind not in "iuf":
                raise ValueError(f"{source}: {name} must hold real numbers, got dtype {arrays[name].dtype}")
        n = _count(arrays["n"], source) if "n" in arrays else None
        metadata = json.loads(str(arrays["metadata"])) if "metadata" in arrays else {}
        stats = cls(arrays.get("mu"), arrays.get("sigma"), n, arrays.get("features"), metadata)
        for c, count in enumerate(arrays.get("class_n", [])):
            moments = int(count) >= 2
            stats.classes[c] = cls(arrays["class_mu"][c] if moments else None,
                                   arrays["class_sigma"][c] if moments else None, int(count))  # fmt: skip
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
    arrays.pop("features", None)  # a statistics file is moments; kept features live in the cache only
    stats = Statistics.from_arrays(arrays, source=str(path))
    validate_statistics(stats, str(path))
    return stats


def validate_statistics(stats: Statistics, source: str) -> None:
    """Refuse statistics no covariance can have, naming ``source``: a count below 2 or not an integer,
    non-finite values, an asymmetric or non-positive-semi-definite covariance (beyond rounding)."""
    from lightning_fid.metrics.fid import check_psd_eigenvalues, check_symmetric

    try:
        if stats.n is not None and stats.n < 2:
            raise ValueError(f"n = {stats.n}: statistics need at least 2 samples")
        if not stats.has_moments:
            return
        for name, tensor in (("mu", stats.mu), ("sigma", stats.sigma)):
            check_finite(tensor, name)
        check_symmetric(stats.sigma, "sigma")
        symmetric = (stats.sigma + stats.sigma.T) / 2
        if int(torch.linalg.cholesky_ex(symmetric)[1]) != 0:  # not positive definite: look closer
            check_psd_eigenvalues(torch.linalg.eigvalsh(symmetric), "sigma")
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


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
        self.n = self.n.to(device)
        self.sum = self.sum.to(device)
        self.outer = self.outer.to(device)
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

    def all_reduce(self, group: Group = None) -> FeatureMoments:
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
        """Mean, covariance and count as :class:`Statistics`."""
        return Statistics(mu=self.mean, sigma=self.cov, n=self.count, metadata=dict(metadata or {}))

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
        m = cls(stats.dim)
        mu = stats.mu.cpu()
        n = float(stats.n)
        m.n.fill_(n)
        m.sum = mu * n
        m.outer = stats.sigma.cpu() * (n - 1) + n * torch.outer(mu, mu)
        return m

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureMoments:
        """Load a file written by :meth:`save` (must contain ``n``)."""
        return cls.from_statistics(load_statistics(path))


class FeatureBank:
    """Per-rank store of feature rows with global sample indices, gathered in global order.

    KID subsets and the CMMD kernel need the samples themselves (not just moments); the bank keeps
    the features this rank computed and, on ``gather``, returns all ranks' features sorted by global
    index, so the result is identical for any number of processes.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self._features: list[torch.Tensor] = []
        self._index: list[torch.Tensor] = []
        self._seen = 0

    def __len__(self) -> int:
        return self._seen

    def add(self, features: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Store a (B, D) batch; ``index`` gives each row's global sample number."""
        if features.ndim != 2 or (self.dim is not None and features.shape[1] != self.dim):
            raise ValueError(f"features must be (batch, {self.dim or 'dim'}), got shape {tuple(features.shape)}")
        if index is None:
            index = default_index(features.shape[0], self._seen, features.device)
        self._features.append(features.detach())
        self._index.append(torch.as_tensor(index, dtype=torch.int64, device=features.device).reshape(-1))
        self._seen += features.shape[0]

    def gather(self, group: Group = None) -> torch.Tensor:
        """All ranks' features in global order (a collective: every rank must call it)."""
        if self._features:
            feats = torch.cat(self._features)
            index = torch.cat(self._index)
        elif self.dim is not None:  # a rank may legitimately hold no samples (N < world size)
            feats = torch.empty(0, self.dim)
            index = torch.empty(0, dtype=torch.int64)
        else:
            raise ValueError("the feature bank is empty and has no dim; create it as FeatureBank(dim)")
        return gather_in_order(feats, index, group)

    def reset(self) -> None:
        """Free the stored features."""
        self._features.clear()
        self._index.clear()
        self._seen = 0
