"""k-NN manifold metrics: precision / recall (Kynkaenniemi et al. 2019), density / coverage (Naeem et al. 2020).

Each sample set's manifold is a union of balls: sample i's ball has the radius to its k-th nearest
*other* sample of the same set (prdc's and torch-fidelity's "(k+1)-th smallest distance, self
included"). The references build full N x N distance matrices (50k samples: 20 GB in float64); here
nothing larger than ``block_size`` x ``block_size`` is ever held:

- radii: block pairs (i, j >= i) of the set against itself, each block used for both its rows and its
  columns, keeping a running top-(k+1) of the smallest squared distances per row;
- ball tests: blocks of generated rows against real columns, counting per sample how many balls
  contain it.

Distances are float64 throughout: float32 features are upcast one block at a time (exact products, no
float64 copy of the whole set), the squared distance |a|^2 + |b|^2 - 2 a.b comes from a float64 Gram
block and float64 norms, is clamped at 0 and square-rooted before any comparison, and a sample's
distance to itself is exactly 0 (to a duplicate: ~1e-8 |a|, as in prdc's scikit-learn distances). Block
boundaries depend on ``block_size`` only, so results are bit-identical for any number of processes:
with ``distributed`` (identical features on every rank), block pairs are dealt round-robin, counts are
summed with one all-reduce and partial top-(k+1) lists are merged after one all-gather.

Comparisons: precision / recall use ``<=`` (Kynkaenniemi et al.'s code, StyleGAN2-ADA, torch-fidelity);
density / coverage and :func:`precision_recall_density_coverage` use ``<`` (the ``prdc`` package).
They differ only for exact ties.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import torch

from lightning_fid.engine._distributed import Group, all_gather_uneven, all_reduce_packed, rank_and_world
from lightning_fid.engine._validation import ArrayLike, as_features, as_tensor, check_same_dim

DEFAULT_BLOCK_SIZE = 2048


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _library(device: torch.device) -> ModuleType:
    """numpy on the CPU (see kernels.py for why), torch on accelerators."""
    return np if device.type == "cpu" else torch


class _Rows:
    """Features in the array library that computes, handed out as float64 row blocks (float32 features
    are upcast one block at a time: 50k x 2048 need no 800 MB float64 copy), with float64 squared norms."""

    def __init__(self, x: torch.Tensor, block_size: int) -> None:
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float64)
        self.xp = _library(x.device)
        self.data = x.contiguous().numpy() if self.xp is np else x.contiguous()
        self.n = x.shape[0]
        blocks = (self.block(slice(s, s + block_size)) for s in range(0, self.n, block_size))
        if self.xp is np:
            self.sq = np.concatenate([np.einsum("ij,ij->i", b, b) for b in blocks])
        else:
            self.sq = torch.cat([(b * b).sum(1) for b in blocks])

    def block(self, rows: slice) -> Any:
        b = self.data[rows]
        if self.xp is np:
            return np.ascontiguousarray(b, dtype=np.float64)
        return b.to(torch.float64).contiguous()


def _sq_distances(a: Any, a_sq: Any, b: Any, b_sq: Any, xp: ModuleType, same: bool) -> Any:
    """(len(a), len(b)) squared distances, clamped at 0; ``same``: b is a, the diagonal is exactly 0."""
    g = a @ a.T if same else a @ b.T  # a @ a.T is a BLAS syrk in numpy
    g *= -2.0
    g += a_sq[:, None]
    g += b_sq[None, :]
    if xp is np:
        np.maximum(g, 0.0, out=g)
        if same:
            np.fill_diagonal(g, 0.0)
    else:
        g.clamp_(min=0.0)
        if same:
            g.fill_diagonal_(0.0)
    return g


def _smallest(v: Any, m: int, xp: ModuleType) -> Any:
    """The ``m`` smallest values of each row (in no particular order)."""
    if xp is np:
        return np.partition(v, m - 1, axis=1)[:, :m]
    return torch.topk(v, m, dim=1, largest=False, sorted=False).values


def _concat(parts: list[Any], xp: ModuleType) -> Any:
    return np.concatenate(parts, axis=1) if xp is np else torch.cat(parts, dim=1)


def knn_radii(
    features: ArrayLike,
    k: int,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    distributed: bool = False,
    group: Group = None,
) -> torch.Tensor:
    """Distance of each sample to its k-th nearest other sample (float64, on the features' device).

    Equal to prdc's ``compute_nearest_neighbour_distances`` and to torch-fidelity's
    ``kthvalue(k + 1)`` radii, without an N x N matrix. Duplicated samples count as neighbours (at
    distance ~0), as in both references. Compute the real set's radii once per run and pass them as
    ``real_radii=`` to :func:`precision_recall` / :func:`density_coverage`.
    """
    k = _check_int(k, "k", 1)
    block_size = _check_int(block_size, "block_size", 1)
    x = as_features(features, "features", min_samples=k + 1)
    m = k + 1
    rows_of = _Rows(x, block_size)
    xp, n = rows_of.xp, rows_of.n
    if xp is np:
        best = np.full((n, m), np.inf)
    else:
        best = torch.full((n, m), float("inf"), dtype=torch.float64, device=x.device)
    rank, world = rank_and_world(group) if distributed else (0, 1)
    starts = range(0, n, block_size)
    job = 0
    for i, s in enumerate(starts):
        rows = slice(s, s + block_size)
        a = None
        for j, t in enumerate(starts):
            if j < i:
                continue
            job += 1
            if (job - 1) % world != rank:
                continue
            cols = slice(t, t + block_size)
            a = rows_of.block(rows) if a is None else a
            b = a if i == j else rows_of.block(cols)
            d = _sq_distances(a, rows_of.sq[rows], b, rows_of.sq[cols], xp, same=i == j)
            best[rows] = _smallest(_concat([best[rows], d], xp), m, xp)
            if i != j:  # the same block, read by columns, serves block j's rows
                best[cols] = _smallest(_concat([best[cols], d.T], xp), m, xp)
    best = torch.from_numpy(best) if xp is np else best
    if distributed and world > 1:
        best = torch.cat(all_gather_uneven(best.to(x.device), group), dim=1)
    kth = torch.sort(best, dim=1).values[:, k]  # the (k+1)-th smallest, self (0) included
    return kth.sqrt().to(x.device)


def _radii(radii: ArrayLike, n: int, name: str, device: torch.device) -> torch.Tensor:
    r = as_tensor(radii, name)
    if r.ndim != 1 or r.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) (one radius per sample), got {tuple(r.shape)}")
    if not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
        raise ValueError(f"{name} must hold finite, non-negative distances")
    return r.to(device=device, dtype=torch.float64)


def _ball_counts(
    real: torch.Tensor,
    fake: torch.Tensor,
    real_radii: torch.Tensor,
    fake_radii: torch.Tensor | None,
    strict: bool,
    block_size: int,
    distributed: bool,
    group: Group,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per fake: how many real balls contain it; per real: how many fakes its ball contains, and (with
    ``fake_radii``) how many fake balls contain it. One pass over (fake block, real block) pairs."""
    r, f = _Rows(real, block_size), _Rows(fake.to(real.device), block_size)
    xp, rr, fr = r.xp, real_radii, fake_radii
    if xp is np:
        rr = rr.cpu().numpy()
        fr = None if fr is None else fr.cpu().numpy()
    inside = (np.less if strict else np.less_equal) if xp is np else (torch.lt if strict else torch.le)
    if xp is np:
        zeros = np.zeros
    else:
        zeros = lambda size: torch.zeros(size, dtype=torch.float64, device=real.device)  # noqa: E731
    fake_hits, real_hits, real_in_fake = zeros(f.n), zeros(r.n), zeros(r.n)
    rank, world = rank_and_world(group) if distributed else (0, 1)
    job = 0
    for s in range(0, f.n, block_size):
        rows, a = slice(s, s + block_size), None
        for t in range(0, r.n, block_size):
            job += 1
            if (job - 1) % world != rank:
                continue
            cols = slice(t, t + block_size)
            a = f.block(rows) if a is None else a
            d = _sq_distances(a, f.sq[rows], r.block(cols), r.sq[cols], xp, same=False)
            d = np.sqrt(d, out=d) if xp is np else d.sqrt_()
            hit = inside(d, rr[None, cols])  # fake row inside real column's ball
            fake_hits[rows] += hit.sum(1)
            real_hits[cols] += hit.sum(0)
            if fr is not None:
                real_in_fake[cols] += inside(d, fr[rows, None]).sum(0)
    out = [torch.as_tensor(v).to(device=real.device, dtype=torch.float64) for v in (fake_hits, real_hits, real_in_fake)]
    if distributed and world > 1:
        out = all_reduce_packed(out, group)
    return out[0], out[1], out[2]


def _inputs(real: ArrayLike, fake: ArrayLike, k: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    k = _check_int(k, "k", 1)
    block_size = _check_int(block_size, "block_size", 1)
    x = as_features(real, "real_features", min_samples=k + 1)
    y = as_features(fake, "fake_features", min_samples=1)
    check_same_dim(x, y, "real_features", "fake_features")
    return x, y.to(x.device), k, block_size


def _real_radii(
    x: torch.Tensor, k: int, given: ArrayLike | None, block_size: int, distributed: bool, group: Group
) -> torch.Tensor:
    """The real set's k-NN radii: the caller's (checked), or computed now."""
    if given is None:
        return knn_radii(x, k, block_size=block_size, distributed=distributed, group=group)
    return _radii(given, x.shape[0], "real_radii", x.device)


def precision_recall(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    k: int = 3,
    *,
    real_radii: ArrayLike | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    distributed: bool = False,
    group: Group = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019), k = 3 as in the paper.

    Precision: fraction of generated samples inside at least one real ball; recall: fraction of real
    samples inside at least one generated ball (``<=``, as torch-fidelity's ``prc`` and StyleGAN2-ADA).
    ``real_radii``: :func:`knn_radii` of the real features with the same ``k``, to skip recomputing them.
    """
    x, y, k, block_size = _inputs(real_features, fake_features, k, block_size)
    if y.shape[0] < k + 1:
        raise ValueError(f"fake_features needs at least k + 1 = {k + 1} samples for recall, got {y.shape[0]}")
    rr = _real_radii(x, k, real_radii, block_size, distributed, group)
    fr = knn_radii(y, k, block_size=block_size, distributed=distributed, group=group)
    fake_hits, _, real_in_fake = _ball_counts(x, y, rr, fr, False, block_size, distributed, group)
    return float((fake_hits > 0).double().mean()), float((real_in_fake > 0).double().mean())


def density_coverage(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    k: int = 5,
    *,
    real_radii: ArrayLike | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    distributed: bool = False,
    group: Group = None,
) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020), k = 5 as in the ``prdc`` package.

    Density = (1 / kM) sum_j #{real balls containing fake j} (may exceed 1); coverage = fraction of
    real balls containing at least one generated sample. Only real balls are used, so outliers among
    generated samples do not inflate either. ``real_radii``: :func:`knn_radii` of the real features
    with the same ``k``.
    """
    x, y, k, block_size = _inputs(real_features, fake_features, k, block_size)
    rr = _real_radii(x, k, real_radii, block_size, distributed, group)
    fake_hits, real_hits, _ = _ball_counts(x, y, rr, None, True, block_size, distributed, group)
    density = float(fake_hits.sum()) / (k * y.shape[0])
    return density, float((real_hits > 0).double().mean())


def precision_recall_density_coverage(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    k: int = 5,
    *,
    real_radii: ArrayLike | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    distributed: bool = False,
    group: Group = None,
) -> dict[str, float]:
    """All four metrics exactly as the ``prdc`` package's ``compute_prdc`` (one k, strict ``<``),
    from one pass over the generated-vs-real distances: {"precision", "recall", "density", "coverage"}."""
    x, y, k, block_size = _inputs(real_features, fake_features, k, block_size)
    if y.shape[0] < k + 1:
        raise ValueError(f"fake_features needs at least k + 1 = {k + 1} samples for recall, got {y.shape[0]}")
    opts = dict(block_size=block_size, distributed=distributed, group=group)
    rr = _real_radii(x, k, real_radii, block_size, distributed, group)
    fake_hits, real_hits, real_in_fake = _ball_counts(x, y, rr, knn_radii(y, k, **opts), True, **opts)
    return {
        "precision": float((fake_hits > 0).double().mean()),
        "recall": float((real_in_fake > 0).double().mean()),
        "density": float(fake_hits.sum()) / (k * y.shape[0]),
        "coverage": float((real_hits > 0).double().mean()),
    }
