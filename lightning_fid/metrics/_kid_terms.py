"""KID's per-subset kernel sums, subset by subset or block by block, whichever costs less.

KID averages the unbiased MMD^2 over S seeded subsets of m samples: per subset it needs the sum of
the cubic kernel over a subset of rows against a subset of columns (real x generated, generated x
generated, real x real). Two ways compute the same sums:

- *subsets*: gather each subset's rows and take one m x m Gram per subset (what torch-fidelity does);
- *blocks*: walk the whole n_x x n_y kernel matrix in block_size blocks once, and read every subset's
  sum off each block with 0/1 indicator rows: sum_{i in I_s, j in J_s} k_ij = p_s^T K q_s, i.e. one
  float64 product K_block @ Q_block^T per block (S columns).

The block walk does n_x n_y (d + 2S) work against S m^2 d for the subsets, but at 2048 x 2048 the
BLAS runs ~1.6x faster per flop than at 1000 x 1000 on CPUs; so at 100 subsets of 1000 out of 10k
samples (S m^2 = n^2) the walk takes about half the time. :func:`subset_sums` picks the walk when
n_x n_y (d + 2S) <= 1.5 S m^2 d. Both give float64 sums of the same float32 kernel values (the
Gram entries are the features' own-precision products, as in torch-fidelity); they differ only in
the order of the float64 additions (relative 1e-15 on each sum). Under torch.distributed subsets or
blocks are dealt round-robin; block results are all-reduced per block and added in one fixed order,
so the values are bit-identical for any number of processes.

With ``groups`` (error bars, :mod:`lightning_fid.metrics._jackknife`) both also return, per subset and
per jackknife group g of the generated samples (position % groups), the sums that leaving g out
removes: generated x generated, the rows of g against the subset, g against g and g's diagonal;
real x generated, the columns of g. They come from the kernel values already computed (one extra
product per block or subset, O(m^2 G) or O(b^2 S)), never from a second kernel evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lightning_fid.engine._distributed import Group, all_reduce_packed, rank_and_world
from lightning_fid.metrics._blocks import blocks, ieee_float32, mine
from lightning_fid.metrics._kernels import compute_dtype, pair_sums, polynomial_kernel


def rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index]; on the CPU via numpy, because a torch op here leaves its OpenMP threads spinning
    while the next BLAS call (numpy's, see _kernels.py) wants the same cores."""
    if x.device.type == "cpu":
        return torch.from_numpy(x.numpy()[index.numpy()])
    return x[index.to(x.device)]


class _Subsets:
    """One m x m block per subset, as ``pair_sums`` with block_size m gives it, bit for bit. On the
    CPU (float32 or float64 features) the gathered rows, the Gram and the cubes live in buffers reused
    for every subset (fresh pages for each took ~10 % of the time at 1000 x 2048)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, size: int) -> None:
        self.x, self.y, self.size = x, y, size
        self.fast = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and y.dtype == x.dtype
        if self.fast:
            self.xn, self.yn = x.numpy(), y.numpy()
            shape, square = (size, x.shape[1]), (size, size)
            self.bx, self.by = np.empty(shape, self.xn.dtype), np.empty(shape, self.xn.dtype)
            self.gram, self.cube = np.empty(square, self.xn.dtype), np.empty(square, self.xn.dtype)

    def sums(self, ix: torch.Tensor, iy: torch.Tensor | None, groups: int = 0) -> tuple[Any, ...]:
        """(sum, diagonal sum) of k over x[ix] against y[iy], or against itself when iy is None; with
        ``groups``, also the (3, G) per-group sums of :func:`subset_group_sums` (the generated side is
        y, or x when iy is None), from the same kernel values."""
        same = iy is None
        if groups and not self.fast:  # one kernel block in float64, summed here
            a = rows(self.x, ix)
            k = _cube(a, a if same else rows(self.y, iy), same)
            total, diagonal = float(k.sum()), float(k.diagonal().sum()) if same else 0.0
        else:
            total, diagonal = self._sums(ix, iy)
            if not groups:
                return total, diagonal
            k = torch.from_numpy(self.cube.astype(np.float64)) if self.kept else None
            if k is None:  # the float64 redo of an overflowing block
                a = rows(self.x, ix)
                k = _cube(a, a if same else rows(self.y, iy), same)
        labels = (ix if same else iy).to(k.device) % groups
        return total, diagonal, subset_group_sums(k, labels, groups, same)

    def _sums(self, ix: torch.Tensor, iy: torch.Tensor | None) -> tuple[float, float]:
        if not self.fast:
            a = rows(self.x, ix)
            pair = (a, a, True) if iy is None else (a, rows(self.y, iy), False)
            return pair_sums([pair], polynomial_kernel, self.size)[0]
        a = np.take(self.xn, ix.numpy(), axis=0, out=self.bx)
        b = None if iy is None else np.take(self.yn, iy.numpy(), axis=0, out=self.by)
        same = b is None
        gram = np.matmul(a, (a if same else b).T, out=self.gram)  # a @ a.T: syrk
        with np.errstate(over="ignore", invalid="ignore"):
            total, diagonal = polynomial_kernel(gram, None, None, a.shape[1], np, same, out=self.cube)
        self.kept = bool(np.isfinite(total))  # self.cube holds this block's kernel values
        if not np.isfinite(total):  # as pair_sums: a float32 block that overflows is redone in float64
            a64 = torch.from_numpy(a.astype(np.float64))
            pair = (a64, a64, True) if same else (a64, torch.from_numpy(b.astype(np.float64)), False)
            return pair_sums([pair], polynomial_kernel, self.size)[0]
        return float(total), float(diagonal)


def _indicators(index: list[torch.Tensor], n: int, like: torch.Tensor) -> Any:
    """(S, n) float64 0/1 rows, row s marking subset s, in the computing library."""
    out = torch.zeros(len(index), n, dtype=torch.float64)
    out[torch.arange(len(index))[:, None], torch.stack(index)] = 1.0
    return out.numpy() if like.device.type == "cpu" else out.to(like.device)


def _cube(a: Any, b: Any, same: bool) -> Any:
    """float64 values (a.b / d + 1)^3 of a block, computed in the features' precision exactly as
    ``polynomial_kernel`` does; a block that overflows float32 is redone in float64."""
    xp = np if isinstance(a, np.ndarray) else torch
    for attempt in range(2):
        if attempt:
            a, b = (a.astype(np.float64), b.astype(np.float64)) if xp is np else (a.double(), b.double())
        gram = a @ (a if same else b).T  # a @ a.T: syrk in numpy
        with np.errstate(over="ignore", invalid="ignore"):
            gram *= 1.0 / a.shape[1]
            gram += 1.0
            cube = gram * gram
            cube *= gram
        if bool(xp.isfinite(cube).all()):
            break
    return cube.astype(np.float64) if xp is np else cube.double()


def _torch(k: Any) -> torch.Tensor:
    return torch.from_numpy(k) if isinstance(k, np.ndarray) else k


def subset_group_sums(k: Any, labels: torch.Tensor, groups: int, same: bool) -> torch.Tensor:
    """(3, G) float64 sums of one subset's kernel block ``k`` by the group of its generated samples
    (``labels``: the group of each column, and of each row when ``same``): with ``same`` (generated x
    generated) the rows of g against all columns, g against g, and g's diagonal; else (real rows x
    generated columns) the columns of g, in row 0."""
    k = _torch(k)
    onehot = torch.nn.functional.one_hot(labels.long(), groups).to(k)
    out = torch.zeros(3, groups, dtype=torch.float64, device=k.device)
    kh = k @ onehot  # (m, G): each row's sum over the columns of each group
    if same:
        out[0] = kh.sum(0)  # k is symmetric: the rows of g against everything
        out[1] = (onehot * kh).sum(0)
        out[2] = k.diagonal() @ onehot
    else:
        out[0] = kh.sum(0)
    return out


def _walk_group_sums(k: Any, blk: Any, px: Any, py: Any, groups: int, symmetric: bool, q: Any) -> torch.Tensor:
    """(3, G, S) group sums of every subset from one block of the walk (see :func:`subset_group_sums`;
    ``q``, already computed for the totals: k @ py[:, cols].T in the symmetric walk, (px[:, rows] @ k)
    * py[:, cols] in the real x generated one). An off-diagonal block of the symmetric walk stands for
    itself and its mirror."""
    k, q = _torch(k), _torch(q)
    pr, pc = _torch(px[:, blk.rows]).T, _torch(py[:, blk.cols]).T  # (rows, S), (cols, S)
    rows_g = torch.arange(blk.rows.start, blk.rows.start + k.shape[0], device=k.device) % groups
    cols_g = torch.arange(blk.cols.start, blk.cols.start + k.shape[1], device=k.device) % groups
    hr = torch.nn.functional.one_hot(rows_g, groups).to(k)
    hc = torch.nn.functional.one_hot(cols_g, groups).to(k)
    out = torch.zeros(3, groups, pr.shape[1], dtype=torch.float64, device=k.device)
    same = symmetric and blk.i == blk.j
    if not symmetric:  # the columns' groups of the real x generated sums
        out[0] += hc.T @ q.T
    elif not same:  # the mirror of an upper block
        out[0] += hc.T @ (pc * (k.T @ pr))
    if symmetric:
        out[0] += hr.T @ (pr * q)
        for g in range(groups):
            r, c = rows_g == g, cols_g == g
            out[1, g] = (pr[r] * (k[r][:, c] @ pc[c])).sum(0) * (1.0 if same else 2.0)
        if same:
            out[2] = hr.T @ (pr * k.diagonal()[:, None])
    return out


def _block_sums(
    x: torch.Tensor, y: torch.Tensor, index_x: list[torch.Tensor], index_y: list[torch.Tensor] | None, opts: tuple
) -> tuple[torch.Tensor, ...]:
    """Every subset's sums from one walk over the blocks of x against y (see the module docstring);
    with groups, also their (3, S, G) group sums."""
    block_size, distributed, group, groups = opts
    symmetric = index_y is None
    dtype = compute_dtype(x)
    xa, ya = x.to(dtype).contiguous(), y.to(dtype).contiguous()
    if x.device.type == "cpu":
        xa, ya = xa.numpy(), ya.numpy()
    px = _indicators(index_x, x.shape[0], x)
    py = px if symmetric else _indicators(index_y, y.shape[0], x)
    rank, world = rank_and_world(group) if distributed else (0, 1)
    walk = list(blocks(x.shape[0], y.shape[0], block_size, symmetric))
    parts = torch.zeros(len(walk), 2, len(index_x), dtype=torch.float64, device=x.device)
    gparts = torch.zeros(len(walk) if groups else 0, 3, groups, len(index_x), dtype=torch.float64, device=x.device)
    for b, blk in mine(enumerate(walk), rank, world):
        same = symmetric and blk.i == blk.j
        k = _cube(xa[blk.rows], ya[blk.cols], same)
        if symmetric:
            q = k @ py[:, blk.cols].T  # (rows, S): each row's sum over the subset's columns
            total = (px[:, blk.rows].T * q).sum(0)
        else:  # (S, cols), summed over the subset's real rows: its group sums come from it as well
            q = (px[:, blk.rows] @ k) * py[:, blk.cols]
            total = q.sum(1)
        parts[b, 0] = torch.as_tensor(total * (1.0 if same or not symmetric else 2.0), device=x.device)
        if same:
            parts[b, 1] = torch.as_tensor(px[:, blk.rows] @ k.diagonal(), device=x.device)
        if groups:
            gparts[b] = _walk_group_sums(k, blk, px, py, groups, symmetric, q).to(x.device)
    if distributed and world > 1:  # each block's values come from one rank, zeros elsewhere: exact
        parts, gparts = all_reduce_packed([parts, gparts], group)
    if groups:
        return parts[:, 0].sum(0), parts[:, 1].sum(0), gparts.sum(0).permute(2, 0, 1)
    return parts[:, 0].sum(0), parts[:, 1].sum(0)


def subset_sums(
    x: torch.Tensor,
    y: torch.Tensor,
    index_x: list[torch.Tensor],
    index_y: list[torch.Tensor] | None,
    block_size: int = 2048,
    distributed: bool = False,
    group: Group = None,
    groups: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Per subset s, float64 on x's device: (sum of k(x_i, y_j) over i in index_x[s], j in index_y[s],
    sum of k(x_i, x_i) over index_x[s]); ``index_y`` None: y is x and the subsets are index_x's (the
    diagonal sums are then the ones an unbiased estimate drops). Subsets hold distinct samples. With
    ``groups`` also the (S, 3, G) group sums of :func:`subset_group_sums` (y generated; x when
    ``index_y`` is None)."""
    with ieee_float32(x.device):  # whatever TF32 setting the caller has: float32 Grams stay float32
        return _subset_sums(x, y, index_x, index_y, block_size, distributed, group, groups)


def _subset_sums(
    x: torch.Tensor,
    y: torch.Tensor,
    index_x: list[torch.Tensor],
    index_y: list[torch.Tensor] | None,
    block_size: int,
    distributed: bool,
    group: Group,
    groups: int,
) -> tuple[torch.Tensor, ...]:
    symmetric = index_y is None
    count, size, dim = len(index_x), len(index_x[0]), x.shape[1]
    pairs = x.shape[0] * y.shape[0] / (2.0 if symmetric else 1.0)
    if pairs * (dim + 2 * count) <= 1.5 * count * size * size / (2.0 if symmetric else 1.0) * dim:
        return _block_sums(x, y, index_x, index_y, (block_size, distributed, group, groups))
    rank, world = rank_and_world(group) if distributed else (0, 1)
    out = torch.zeros(2, count, dtype=torch.float64, device=x.device)
    by_group = torch.zeros(count, 3, groups, dtype=torch.float64, device=x.device)
    subsets = _Subsets(x, y, size)
    for s in mine(range(count), rank, world):
        result = subsets.sums(index_x[s], None if symmetric else index_y[s], groups)
        out[0, s], out[1, s] = result[0], result[1]
        if groups:
            by_group[s] = result[2].to(x.device)
    if distributed and world > 1:
        out, by_group = all_reduce_packed([out, by_group], group)
    return (out[0], out[1], by_group) if groups else (out[0], out[1])
