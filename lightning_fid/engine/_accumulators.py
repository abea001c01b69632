"""Accumulators: how a sample set's features add up batch by batch and merge across ranks.

- :class:`FeatureMoments` accumulates the float64 count, sum and sum of outer products. These add up
  across batches and ranks, so one all-reduce merges every process's moments and the result does
  not depend on how the samples were split. FID needs nothing more.
- :class:`FeatureBank` keeps the feature rows themselves with their global sample indices and
  gathers them into global order (KID, CMMD and other sample-based metrics).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from lightning_fid.engine._distributed import Group, all_reduce_packed, default_index, gather_in_order
from lightning_fid.engine._stats import Statistics, load_statistics
from lightning_fid.engine._validation import ArrayLike, as_tensor, check_finite


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


class GroupMoments:
    """Float64 count, sum and sum of outer products of features per jackknife group ``index % groups``.

    What the Fréchet distances' error bars need from the generated side (see
    :mod:`lightning_fid.metrics._jackknife`): ``groups`` x (1 + d + d^2) float64 values, which replace
    the total :class:`FeatureMoments` (their sum; the same flops, ``groups - 1`` more d x d matrices).
    They add up across batches and ranks, so they merge in the same single all-reduce. Rows wait per
    group until ``flush_rows`` of them are there: one outer-product update per group and batch would
    stream all G d x d matrices through memory for a few rows each (G times the traffic of the total).
    """

    def __init__(self, dim: int, groups: int, device: torch.device | str | None = None, flush_rows: int = 512) -> None:
        self.groups, self.flush_rows = groups, flush_rows
        self.n = torch.zeros(groups, dtype=torch.float64, device=device)
        self.sum = torch.zeros(groups, dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(groups, dim, dim, dtype=torch.float64, device=device)
        self._waiting: list[list[torch.Tensor]] = [[] for _ in range(groups)]

    def update(self, features: torch.Tensor, index: torch.Tensor) -> None:
        """Add a (B, d) batch whose rows have the global sample indices ``index``."""
        check_finite(features, "features")
        f = features.detach().to(device=self.sum.device)
        group = index.to(self.sum.device) % self.groups
        for g in group.unique().tolist():
            self._waiting[g].append(f[group == g])
            if sum(rows.shape[0] for rows in self._waiting[g]) >= self.flush_rows:
                self._flush(g)

    def _flush(self, g: int) -> None:
        if self._waiting[g]:
            rows = torch.cat(self._waiting[g]).to(torch.float64)
            self._waiting[g] = []
            self.n[g] += rows.shape[0]
            self.sum[g] += rows.sum(dim=0)
            self.outer[g].addmm_(rows.T, rows)

    def tensors(self) -> list[torch.Tensor]:
        """The accumulators (every waiting row added), for one packed all-reduce."""
        for g in range(self.groups):
            self._flush(g)
        return [self.n, self.sum, self.outer]


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
