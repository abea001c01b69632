"""Kernel sums over all sample pairs, block by block, in float64.

KID (polynomial kernel) and CMMD (Gaussian kernel) are built from sums of kernel matrices. We never
hold an n x n matrix: pairs of row blocks are visited in a fixed order, inner products are taken in
the features' precision (float32 features give float32 products, as in every reference), and the
sums are float64 (see each kernel for the precision of its values). Under torch.distributed the
block pairs are dealt round-robin to the ranks and the partial sums are all-reduced, so each rank
does 1/world of the work.

On the CPU the block arithmetic runs through numpy: its ``x @ x.T`` is a BLAS syrk (half the flops
of torch's CPU matmul), and mixing torch's OpenMP pool with numpy's BLAS threads on the same cores
made torch's elementwise ops ten times slower in our measurements. On GPUs it runs through torch.
Both libraries share the few array operations used here, so there is one code path.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import torch

from lightning_fid.engine._distributed import Group, all_reduce_packed, rank_and_world

# kernel(gram, x_sq, y_sq, dim, xp, same) -> (float64 sum of the kernel block, and of its diagonal if
# same else 0); it may overwrite gram, which is in the features' precision. xp is numpy or torch.
Kernel = Callable[[Any, Any, Any, int, ModuleType, bool], tuple[Any, Any]]


def polynomial_kernel(gram: Any, x_sq: Any, y_sq: Any, dim: int, xp: ModuleType, same: bool) -> tuple[Any, Any]:
    """KID's cubic kernel (x.y / d + 1)^3 (torch-fidelity, Binkowski et al.), summed in float64.

    Kernel values are formed in the gram's precision, as torch-fidelity does: for float32 features
    their rounding error is that of the float32 inner products themselves. The sums are float64."""
    gram *= 1.0 / dim
    gram += 1.0
    cube = gram * gram
    cube *= gram
    return cube.sum(dtype=xp.float64), (cube.diagonal().sum(dtype=xp.float64) if same else 0.0)


polynomial_kernel.needs_norms = False  # type: ignore[attr-defined]


def gaussian_kernel(sigma: float) -> Kernel:
    """CMMD's RBF kernel exp(-||x-y||^2 / (2 sigma^2)), written as google-research's distance.py does."""
    gamma = 1.0 / (2.0 * sigma**2)

    def kernel(gram: Any, x_sq: Any, y_sq: Any, dim: int, xp: ModuleType, same: bool) -> tuple[Any, Any]:
        # float64 throughout: CMMD is a small difference of kernel means close to 1.
        gram = xp.asarray(gram, dtype=xp.float64)
        x_sq, y_sq = xp.asarray(x_sq, dtype=xp.float64), xp.asarray(y_sq, dtype=xp.float64)
        gram *= -2.0
        gram += x_sq[:, None]
        gram += y_sq[None, :]
        gram *= -gamma
        xp.exp(gram, out=gram)
        return gram.sum(), (gram.diagonal().sum() if same else 0.0)

    kernel.needs_norms = True  # type: ignore[attr-defined]
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
    With ``distributed`` every rank must pass identical features; the result is all-reduced.
    """
    rank, world = rank_and_world(group) if distributed else (0, 1)
    device = pairs[0][0].device
    xp = np if device.type == "cpu" else torch
    sums = [[0.0, 0.0] for _ in pairs]
    job = 0
    for p, (x, y, symmetric) in enumerate(pairs):
        dtype = compute_dtype(x)
        x, y = x.to(dtype).contiguous(), y.to(dtype).contiguous()
        if xp is np:
            x, y = x.numpy(), y.numpy()
        starts_x, starts_y = range(0, x.shape[0], block_size), range(0, y.shape[0], block_size)
        for i, a in enumerate(starts_x):
            for j, b in enumerate(starts_y):
                if symmetric and j < i:
                    continue
                job += 1
                if (job - 1) % world != rank:
                    continue
                same = symmetric and i == j
                total, diag = _block_sums(kernel, x[a : a + block_size], y[b : b + block_size], same, xp)
                sums[p][0] += (2.0 if symmetric and j > i else 1.0) * total
                sums[p][1] += diag
    partial = torch.tensor([[float(v) for v in s] for s in sums], dtype=torch.float64, device=device)
    if distributed and world > 1:
        (partial,) = all_reduce_packed([partial], group)
    return [(float(a), float(b)) for a, b in partial.tolist()]
