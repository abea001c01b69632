"""Kernel sums over all sample pairs, block by block, in float64.

KID (polynomial kernel) and CMMD (Gaussian kernel) are built from sums of kernel matrices. We never
hold an n x n matrix: pairs of row blocks are visited in a fixed order, inner products are taken in
the features' precision (float32 features give float32 products, as in every reference), and the
sums are float64 (see each kernel for the precision of its values). Under torch.distributed the
block pairs are dealt round-robin to the ranks and the partial sums are all-reduced, so each rank
does 1/world of the work. The walk is ``_blocks.blocks``; :func:`kernel_blocks` yields each block with
its row and column ranges (the place for per-block work such as per-group sums).

On the CPU the block arithmetic runs through numpy: its ``x @ x.T`` is a BLAS syrk (half the flops
of torch's CPU matmul), and mixing torch's OpenMP pool with numpy's BLAS threads on the same cores
made torch's elementwise ops ten times slower in our measurements. On GPUs it runs through torch.
Both libraries share the few array operations used here, so there is one code path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np
import torch

from lightning_fid.engine._distributed import Group, all_reduce_packed, rank_and_world
from lightning_fid.metrics._blocks import Block, blocks, ieee_float32, mine

# kernel(gram, x_sq, y_sq, dim, xp, same) -> (float64 sum of the kernel block, and of its diagonal if
# same else 0); it may overwrite gram, which is in the features' precision. xp is numpy or torch.
Kernel = Callable[[Any, Any, Any, int, ModuleType, bool], tuple[Any, Any]]


def polynomial_kernel(
    gram: Any, x_sq: Any, y_sq: Any, dim: int, xp: ModuleType, same: bool, out: Any = None
) -> tuple[Any, Any]:
    """KID's cubic kernel (x.y / d + 1)^3 (torch-fidelity, Binkowski et al.), summed in float64.

    Kernel values are formed in the gram's precision, as torch-fidelity does: for float32 features
    their rounding error is that of the float32 inner products themselves. The sums are float64.
    ``out``: a numpy buffer of gram's shape for the cubes (the same values, no new allocation)."""
    gram *= 1.0 / dim
    gram += 1.0
    cube = gram * gram if out is None else np.multiply(gram, gram, out=out)
    cube *= gram
    return cube.sum(dtype=xp.float64), (cube.diagonal().sum(dtype=xp.float64) if same else 0.0)


polynomial_kernel.needs_norms = False  # type: ignore[attr-defined]


def gaussian_kernel(sigma: float) -> Kernel:
    """CMMD's RBF kernel exp(-||x-y||^2 / (2 sigma^2)), written as google-research's distance.py does."""
    gamma = 1.0 / (2.0 * sigma**2)

    def values(gram: Any, x_sq: Any, y_sq: Any, dim: int, xp: ModuleType) -> Any:
        # float64 throughout: CMMD is a small difference of kernel means close to 1.
        gram = xp.asarray(gram, dtype=xp.float64)
        x_sq, y_sq = xp.asarray(x_sq, dtype=xp.float64), xp.asarray(y_sq, dtype=xp.float64)
        gram *= -2.0
        gram += x_sq[:, None]
        gram += y_sq[None, :]
        gram *= -gamma
        xp.exp(gram, out=gram)
        return gram

    def kernel(gram: Any, x_sq: Any, y_sq: Any, dim: int, xp: ModuleType, same: bool) -> tuple[Any, Any]:
        k = values(gram, x_sq, y_sq, dim, xp)
        return k.sum(), (k.diagonal().sum() if same else 0.0)

    kernel.needs_norms = True  # type: ignore[attr-defined]
    kernel.values = values  # type: ignore[attr-defined]  # the float64 block itself (per-group sums)
    return kernel


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Precision for the inner products: float64 stays float64, everything else is float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _block_sums(kernel: Kernel, x: Any, y: Any, same: bool, xp: ModuleType) -> tuple[Any, Any]:
    """(sum of k(x_i, y_j), sum of the diagonal if ``same``) for one pair of row blocks. A float32
    block whose kernel values overflow is recomputed in float64, never summed to inf (numpy's
    overflow warnings for that first try are expected, so they are silenced)."""
    with np.errstate(over="ignore", invalid="ignore"):
        total, diagonal = _block_sums_in(kernel, x, y, same, xp)
    if not bool(xp.isfinite(xp.asarray(total))) and x.dtype != xp.float64:
        total, diagonal = _block_sums_in(
            kernel,
            x.astype(xp.float64) if xp is np else x.double(),
            y.astype(xp.float64) if xp is np else y.double(),
            same,
            xp,
        )
    return total, diagonal


def _block_sums_in(kernel: Kernel, x: Any, y: Any, same: bool, xp: ModuleType) -> tuple[Any, Any]:
    g = x @ (x if same else y).T  # x @ x.T: syrk on the CPU
    x_sq = y_sq = None
    if kernel.needs_norms:  # type: ignore[attr-defined]
        x_sq = (x * x).sum(1)
        y_sq = x_sq if same else (y * y).sum(1)
    return kernel(g, x_sq, y_sq, x.shape[1], xp, same)


def kernel_blocks(
    x: Any, y: Any, symmetric: bool, kernel: Kernel, block_size: int, rank: int = 0, world: int = 1, job: int = 0
) -> Iterator[tuple[Block, Any, Any]]:
    """This rank's (block, float64 sum of the kernel block, sum of its diagonal or 0) over the block
    pairs of x against y (arrays of the computing library; ``symmetric``: y is x, only j >= i, each
    off-diagonal block standing for itself and its mirror). ``job`` offsets the round-robin dealing
    when several pairs share one walk. The seam for per-block work such as per-group sums."""
    walk = blocks(x.shape[0], y.shape[0], block_size, symmetric)
    for blk in mine(walk, rank, world, start=job):
        yield blk, *_block_sums(kernel, x[blk.rows], y[blk.cols], symmetric and blk.i == blk.j, _lib(x))


def _lib(x: Any) -> ModuleType:
    return np if isinstance(x, np.ndarray) else torch


def _computing_arrays(x: torch.Tensor, y: torch.Tensor) -> tuple[Any, Any]:
    """x and y in x's compute precision, contiguous, as numpy arrays on the CPU (torch elsewhere)."""
    dtype = compute_dtype(x)
    x, y = x.to(dtype).contiguous(), y.to(dtype).contiguous()
    return (x.numpy(), y.numpy()) if x.device.type == "cpu" else (x, y)


def pair_sums(
    pairs: list[tuple[torch.Tensor, torch.Tensor, bool]],
    kernel: Kernel,
    block_size: int = 2048,
    distributed: bool = False,
    group: Group = None,
) -> list[tuple[float, float]]:
    """For each (x, y, symmetric) return (sum of all kernel values, sum of the diagonal's values).

    ``symmetric`` means y is x: only the upper block triangle is evaluated and mirrored. The diagonal
    sum lets unbiased estimators drop k(x_i, x_i) using exactly the values that entered the total.
    With ``distributed`` every rank must pass identical features; the result is all-reduced (the
    block pairs of all pairs are dealt round-robin in one sequence).
    """
    rank, world = rank_and_world(group) if distributed else (0, 1)
    device = pairs[0][0].device
    sums = [[0.0, 0.0] for _ in pairs]
    job = 0
    for p, (x, y, symmetric) in enumerate(pairs):
        x, y = _computing_arrays(x, y)
        with ieee_float32(device):  # whatever TF32 setting the caller has: float32 Grams stay float32
            for blk, total, diagonal in kernel_blocks(x, y, symmetric, kernel, block_size, rank, world, job):
                sums[p][0] += (2.0 if symmetric and blk.j > blk.i else 1.0) * total
                sums[p][1] += diagonal
        job += sum(1 for _ in blocks(x.shape[0], y.shape[0], block_size, symmetric))
    partial = torch.tensor([[float(v) for v in s] for s in sums], dtype=torch.float64, device=device)
    if distributed and world > 1:
        (partial,) = all_reduce_packed([partial], group)
    return [(float(a), float(b)) for a, b in partial.tolist()]


def pair_group_sums(
    pairs: list[tuple[torch.Tensor, torch.Tensor, bool]],
    kernel: Kernel,
    groups: int,
    block_size: int = 2048,
    distributed: bool = False,
    group: Group = None,
) -> list[tuple[float, float, torch.Tensor]]:
    """:func:`pair_sums` (the same walk, the same kernel values and sums) plus, per pair, the (3, G)
    float64 sums by jackknife group ``position % groups`` of the generated side, the y of each pair
    (and x for a symmetric one): see :func:`_group_sums`. ``kernel`` must offer ``kernel.values``."""
    rank, world = rank_and_world(group) if distributed else (0, 1)
    device = pairs[0][0].device
    sums = torch.zeros(len(pairs), 2 + 3 * groups, dtype=torch.float64)
    job = 0
    for p, (x, y, symmetric) in enumerate(pairs):
        x, y = _computing_arrays(x, y)
        walk = list(blocks(x.shape[0], y.shape[0], block_size, symmetric))
        with ieee_float32(device):
            for blk in mine(walk, rank, world, start=job):
                same = symmetric and blk.i == blk.j
                k = _values(kernel, x[blk.rows], y[blk.cols], same)
                sums[p, 0] += (2.0 if symmetric and blk.j > blk.i else 1.0) * float(k.sum())  # as pair_sums
                sums[p, 1] += float(k.diagonal().sum()) if same else 0.0
                sums[p, 2:] += _group_sums(torch.as_tensor(k), blk, groups, symmetric).reshape(-1).cpu()
        job += len(walk)
    if distributed and world > 1:
        (sums,) = all_reduce_packed([sums.to(device)], group)
    return [(float(r[0]), float(r[1]), r[2:].reshape(3, groups).cpu()) for r in sums]


def _values(kernel: Kernel, x: Any, y: Any, same: bool) -> Any:
    """The float64 kernel block of x against y with exactly ``_block_sums``' arithmetic (its inner
    products in the features' precision; a float32 block that is not finite redone in float64)."""
    xp = _lib(x)
    g = x @ (x if same else y).T  # x @ x.T: syrk on the CPU
    x_sq = (x * x).sum(1)
    with np.errstate(over="ignore", invalid="ignore"):
        k = kernel.values(g, x_sq, x_sq if same else (y * y).sum(1), x.shape[1], xp)  # type: ignore[attr-defined]
    if not bool(xp.isfinite(k).all()) and x.dtype != xp.float64:
        wide = (x.astype(np.float64), y.astype(np.float64)) if xp is np else (x.double(), y.double())
        return _values(kernel, *wide, same)
    return k


def _group_sums(k: torch.Tensor, blk: Block, groups: int, symmetric: bool) -> torch.Tensor:
    """(3, G) sums of one block by group: for a symmetric pair (generated x generated), the rows of g
    against all columns, g against g and g's diagonal, counting the mirror of an off-diagonal block;
    else (real rows x generated columns) the columns of g in row 0."""
    rows_g = torch.arange(blk.rows.start, blk.rows.start + k.shape[0], device=k.device) % groups
    cols_g = torch.arange(blk.cols.start, blk.cols.start + k.shape[1], device=k.device) % groups
    hr, hc = (torch.nn.functional.one_hot(g, groups).to(k) for g in (rows_g, cols_g))
    out = torch.zeros(3, groups, dtype=torch.float64, device=k.device)
    same = symmetric and blk.i == blk.j
    if not same:  # the columns' groups: real x generated, or the mirror of an upper block
        out[0] += k.sum(0) @ hc
    if symmetric:
        out[0] += k.sum(1) @ hr
        out[1] = (hr * (k @ hc)).sum(0) * (1.0 if same else 2.0)
        if same:
            out[2] = k.diagonal() @ hr
    return out
