"""Pairs of row blocks: which are visited, in which order, by which rank, and the features they read.

Every k-NN and kernel metric walks pairs of row blocks and never holds an N x N matrix. :func:`blocks`
is the one place that fixes the walk: row-major over (row block i, column block j), for a set against
itself only j >= i (each such block then serves its rows and, transposed, its columns), each block with
its row and column ranges. :func:`mine` deals the walk round-robin to the ranks of torch.distributed.
Per-block work (sums, ball counts, per-group sums for error bars) hooks in at these two functions.

On the CPU the arithmetic runs through numpy: its ``x @ x.T`` is a BLAS syrk (half the flops of torch's
CPU matmul), and mixing torch's OpenMP pool with numpy's BLAS threads on the same cores made torch's
elementwise ops ten times slower in our measurements. On accelerators it runs through torch. Both
libraries share the few array operations used here, so there is one code path.

:func:`exact_dots` is the float64 value every k-NN decision is defined by: each product in float64,
then summed in one fixed pairwise order (halves added until one column is left). BLAS sums in an order
that depends on the matrix shape, the tile an entry falls in and the thread count (the last bit of a
float64 distance moves with ``block_size``), so a BLAS product only *screens* here: its error is
bounded, and entries a decision could hinge on are recomputed by :func:`exact_dots`, whose value
depends on the two vectors only, on any device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
import torch

DEFAULT_BLOCK_SIZE = 2048
T = TypeVar("T")


def library(device: torch.device) -> ModuleType:
    """numpy on the CPU, torch on accelerators (see the module docstring)."""
    return np if device.type == "cpu" else torch


@dataclass(frozen=True)
class Block:
    """Row block ``i`` (``rows``) against column block ``j`` (``cols``)."""

    i: int
    j: int
    rows: slice
    cols: slice


def blocks(n_rows: int, n_cols: int, block_size: int, symmetric: bool = False) -> Iterator[Block]:
    """Every block pair in the fixed order; ``symmetric`` (a set against itself): only j >= i."""
    for i, s in enumerate(range(0, n_rows, block_size)):
        for j, t in enumerate(range(0, n_cols, block_size)):
            if not (symmetric and j < i):
                yield Block(i, j, slice(s, min(s + block_size, n_rows)), slice(t, min(t + block_size, n_cols)))


def mine(items: Iterable[T], rank: int, world: int, start: int = 0) -> Iterator[T]:
    """This rank's share of ``items``, dealt round-robin (all of them on a single process); ``start``:
    the number of items dealt before these (several walks dealt as one sequence)."""
    for job, item in enumerate(items, start):
        if job % world == rank:
            yield item


def _pad_pow2(x: Any, xp: ModuleType) -> Any:
    width = 1 << max(0, (x.shape[1] - 1).bit_length())
    if width == x.shape[1]:
        return x
    if xp is np:
        return np.concatenate([x, np.zeros((x.shape[0], width - x.shape[1]))], axis=1)
    return torch.cat([x, x.new_zeros((x.shape[0], width - x.shape[1]))], dim=1)


def _tree_sum(p: Any, xp: ModuleType) -> Any:
    """Row sums of a float64 (n, 2^h) array in one fixed order: add the right half to the left half
    until one column is left (the same IEEE operations in numpy and torch, so the same bits)."""
    width = p.shape[1]
    while width > 1:
        width //= 2
        p[:, :width] += p[:, width : 2 * width]
    return p[:, 0].copy() if xp is np else p[:, 0].clone()


class Features:
    """One sample set in the array library that computes, handed out per block.

    ``block64`` gives float64 rows (float32 features are upcast one block at a time: 50k x 2048 need
    no 800 MB float64 copy); ``block32`` float32 rows (float32 features as they are, float16 / bfloat16
    converted once, exactly; float64 rounded one block at a time, a rounding the error bounds include).
    ``sq`` holds the squared norms as :func:`exact_dots` computes them, ``max_sq`` their maximum.
    """

    def __init__(self, x: torch.Tensor, block_size: int) -> None:
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)  # float16 / bfloat16 (and their products) are exact in float32 / float64
        self.xp = library(x.device)
        self.device = x.device
        self.data = x.contiguous().numpy() if self.xp is np else x.contiguous()
        self.n, self.dim = x.shape
        self.sq = self._concat(
            [self._norms(self.block64(slice(s, s + block_size))) for s in range(0, self.n, block_size)]
        )
        self.max_sq = float(self.sq.max())

    def _concat(self, parts: list[Any]) -> Any:
        return np.concatenate(parts) if self.xp is np else torch.cat(parts)

    def _norms(self, b: Any) -> Any:
        return _tree_sum(_pad_pow2(b * b, self.xp), self.xp)

    def block64(self, rows: Any) -> Any:
        """Rows (a slice or an index array) as a contiguous float64 array."""
        b = self.data[rows]
        return np.ascontiguousarray(b, dtype=np.float64) if self.xp is np else b.to(torch.float64).contiguous()

    def block32(self, rows: slice) -> Any:
        b = self.data[rows]
        return np.ascontiguousarray(b, dtype=np.float32) if self.xp is np else b.to(torch.float32).contiguous()


def exact_dots(a: Features, p: Any, b: Features, q: Any) -> Any:
    """float64 a_p . b_q for index arrays ``p``, ``q``: products in float64 (exact for features that
    are float32 or narrower), then the fixed pairwise order of ``_tree_sum``. ``exact_dots(a, p, a, p)``
    equals ``a.sq[p]`` bit for bit."""
    xp, out = a.xp, []
    step = max(1, (1 << 22) // max(1, a.dim))  # ~32 MB of float64 products per chunk
    for s in range(0, len(p), step):
        u, v = a.data[p[s : s + step]], b.data[q[s : s + step]]
        if xp is np:  # float64 products of the rows as stored (float32 or float64): no float64 copies
            prod = np.multiply(u, v, dtype=np.float64)
        else:
            prod = u.to(torch.float64) * v.to(torch.float64)
        out.append(_tree_sum(_pad_pow2(prod, xp), xp))
    if not out:
        return np.zeros(0) if xp is np else torch.zeros(0, dtype=torch.float64, device=a.device)
    return np.concatenate(out) if xp is np else torch.cat(out)


@contextmanager
def ieee_float32(device: torch.device) -> Iterator[None]:
    """float32 matrix products in IEEE float32 on CUDA (no TF32: the error bounds assume a 24-bit
    significand), the previous settings restored afterwards. The CPU path (numpy) never uses TF32."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        old = matmul.fp32_precision
        matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = old
        return
    old_flag, old_precision = matmul.allow_tf32, torch.get_float32_matmul_precision()
    matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old_precision)
        matmul.allow_tf32 = old_flag
