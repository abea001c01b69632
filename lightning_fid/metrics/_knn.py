"""The k-th nearest other sample of every sample, from screened blocks (see ``_screen``), exactly.

Per row the state holds the k+1 smallest exact squared distances found so far (``exact``, the row's
own 0 included) and up to ``cap`` screened *candidates*: entries known only within [lo, hi]. With tau
the (k+1)-th smallest of the exact values and the candidates' upper bounds, tau bounds the row's
(k+1)-th smallest distance from above, so an entry with lo >= tau can never change that value and is
dropped, from a block before it is stored and from the candidates whenever tau falls. A row whose
candidates overflow ``cap`` (heavy ties) has its lowest ones computed exactly, until the rest fit.

At the end, per row: with L the (k+1)-th smallest lower bound, entries whose upper bound is below L
certainly rank among the k smallest and need no value; the remaining candidates below tau are
computed exactly (typically only the k-th neighbour itself), and the (k+1)-th smallest is read off.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lightning_fid.engine._distributed import Group, all_gather_uneven, rank_and_world
from lightning_fid.metrics import _xp as X
from lightning_fid.metrics._blocks import Block, Features, blocks, ieee_float32, mine
from lightning_fid.metrics._screen import Screen, exact_sq

INF = math.inf


class Radii:
    """Squared k-NN radii of one sample set, accumulated over the block pairs given to :meth:`visit`."""

    def __init__(
        self, x: Features, k: int, screen: Screen, observe: Callable[[Block, Any], None] | None = None
    ) -> None:
        self.x, self.xp, self.screen, self.observe = x, x.xp, screen, observe
        self.m, self.cap = k + 1, 2 * (k + 1) + 8
        like, n = x.sq, x.n
        self.exact = X.full(self.xp, (n, self.m), INF, like)
        self.lo = X.full(self.xp, (n, self.cap), INF, like)
        self.hi = X.full(self.xp, (n, self.cap), INF, like)
        self.col = X.full(self.xp, (n, self.cap), -1, like, "int64")
        self.tau = X.full(self.xp, (n,), INF, like)

    def visit(self, blk: Block) -> None:
        """Screen one block pair (i <= j) and keep what could matter, for its rows and its columns."""
        same, x = blk.i == blk.j, self.x
        h = self.screen.block(x, blk.rows, x, blk.cols, same)  # minus half squared distances
        if same:
            np.fill_diagonal(h, -INF) if self.xp is np else h.fill_diagonal_(-INF)
        sides = [(blk.rows, blk.cols, False)] + ([] if same else [(blk.cols, blk.rows, True)])
        limit = max(16 * self.m * h.shape[0], h.shape[0] * h.shape[1] // 64)
        picks = [self._select(h, rows, cols, t, limit if self.screen.float32 else None) for rows, cols, t in sides]
        if any(p is None for p in picks):  # too many undecided entries for float32: screen in float64
            self.screen.fall_back()
            return self.visit(blk)
        if self.observe is not None:  # another reader of the same block (the recall error bars' neighbours)
            self.observe(blk, h)
        if same:
            self._add_exact(X.arange(self.xp, blk.rows.stop - blk.rows.start, self.tau) + blk.rows.start, None)
        for pick in picks:
            self._merge(*pick)

    def _select(self, h: Any, rows: slice, cols: slice, flip: bool, limit: int | None) -> tuple[Any, ...] | None:
        """Entries whose lower bound is below their row's tau, from the block h (-half distances) for
        its rows, or with ``flip`` for its columns (h's transpose; the masks stay in h's layout)."""
        xp, m = self.xp, self.m
        width = self.screen.half_width(self.x.sq[rows], float(self.x.sq[cols].max()))
        tau_h = self.tau[rows] * 0.5
        first = xp.isinf(tau_h)
        width_all = h.shape[0 if flip else 1]
        if bool(first.any()) and width_all >= m:  # a row's first block: its own m-th smallest bounds tau
            part = h[:, first].T if flip else h[first]  # -h: the m-th largest is the m-th smallest distance
            part = np.ascontiguousarray(part) if xp is np else part.contiguous()
            fresh = -X.to64(xp, X.kth(xp, part, width_all - m))
            tau_h[first] = xp.minimum(tau_h[first], fresh + width[first])
        limit_h = tau_h + width
        limit_h = limit_h + abs(limit_h) * 1e-15  # the rounding of these two float64 operations
        limit_h[tau_h == 0] = -INF  # exact distances are >= 0: nothing can rank below a tau of 0
        bound = X.as_dtype(xp, -limit_h, h, -INF)
        keep = h >= (bound[None, :] if flip else bound[:, None])
        if bool(xp.isinf(limit_h).any()):  # no bound yet: every entry but the row's own (-inf)
            keep &= h > -INF
        if limit is not None and X.total(xp, keep) > limit:
            return None
        i, j = X.nonzero(xp, keep)
        half = -X.to64(xp, h[i, j])
        r, c = (j, i) if flip else (i, j)
        if flip:  # by row of the transpose
            order = X.argsort(xp, r)
            r, c, half = r[order], c[order], half[order]
        lo = (half - width[r]) * 2.0
        lo = lo.clip(min=0.0) if xp is np else lo.clamp_(min=0.0)
        return r + rows.start, c + cols.start, lo, (half + width[r]) * 2.0, rows

    def _add_exact(self, rows: Any, values: Any) -> None:
        """Fold exact squared distances (rows x w, inf-padded; None: each row's own 0) into ``exact``."""
        if values is None:
            values = X.full(self.xp, (len(rows), 1), 0.0, self.tau)
        both = X.concat(self.xp, [self.exact[rows], values], 1)
        self.exact[rows] = X.smallest(self.xp, both, self.m)

    def _merge(self, r: Any, c: Any, lo: Any, hi: Any, rows: slice) -> None:
        """Store new candidates (sorted by row r), resolving rows that overflow; refresh tau."""
        xp, cap, n_rows = self.xp, self.cap, rows.stop - rows.start
        local = r - rows.start
        counts = X.bincount(xp, local, n_rows)
        starts = X.cumsum(xp, counts) - counts
        have = xp.isfinite(self.lo[rows]).sum(1)
        over = (have + counts) > cap
        slot = have[local] + (X.arange(xp, len(r), r) - starts[local])
        fits = ~over[local]
        self.lo[r[fits], slot[fits]] = lo[fits]
        self.hi[r[fits], slot[fits]] = hi[fits]
        self.col[r[fits], slot[fits]] = c[fits]
        if bool(over.any()):
            self._overflow(X.arange(xp, n_rows, r)[over] + rows.start, r[~fits], c[~fits], lo[~fits], hi[~fits])
        self._refresh(rows)

    def _overflow(self, rows: Any, r: Any, c: Any, lo: Any, hi: Any) -> None:
        """Rows with more candidates than ``cap``: compute the lowest exactly until the rest fit."""
        xp, cap = self.xp, self.cap
        old = xp.isfinite(self.lo[rows])
        pos_r, pos_s = X.nonzero(xp, old)
        r = X.concat(xp, [rows[pos_r], r])
        c = X.concat(xp, [self.col[rows][pos_r, pos_s], c])
        lo = X.concat(xp, [self.lo[rows][pos_r, pos_s], lo])
        hi = X.concat(xp, [self.hi[rows][pos_r, pos_s], hi])
        self.lo[rows], self.hi[rows], self.col[rows] = INF, INF, -1
        while len(r):
            order = _by_row_then(xp, r, lo)
            r, c, lo, hi = r[order], c[order], lo[order], hi[order]
            rank = _rank_in_row(xp, r)
            now = rank < cap
            self._fold_exact(r[now], c[now], rank[now])
            r, c, lo, hi = r[~now], c[~now], lo[~now], hi[~now]
            tau = X.kth(xp, X.concat(xp, [self.exact[r], self.hi[r]], 1), self.m - 1) if len(r) else lo
            alive = lo < tau
            r, c, lo, hi = r[alive], c[alive], lo[alive], hi[alive]
            rank = _rank_in_row(xp, r)
            total = X.bincount(xp, r, self.x.n)[r] if len(r) else rank
            fits = total <= cap
            self.lo[r[fits], rank[fits]] = lo[fits]
            self.hi[r[fits], rank[fits]] = hi[fits]
            self.col[r[fits], rank[fits]] = c[fits]
            r, c, lo, hi = r[~fits], c[~fits], lo[~fits], hi[~fits]

    def _fold_exact(self, r: Any, c: Any, rank: Any) -> None:
        """Exact values of entries (r, c), rank = position within row r's group, folded into ``exact``."""
        if not len(r):
            return
        rows, inverse = np.unique(r, return_inverse=True) if self.xp is np else r.unique(return_inverse=True)
        values = X.full(self.xp, (len(rows), int(rank.max()) + 1), INF, self.tau)
        values[inverse, rank] = exact_sq(self.x, r, self.x, c)
        self._add_exact(rows, values)

    def _refresh(self, rows: slice) -> None:
        """tau of the rows, then drop candidates with lo >= tau and pack the rest to the left."""
        xp = self.xp
        lo, hi, col = self.lo[rows], self.hi[rows], self.col[rows]
        tau = X.kth(xp, X.concat(xp, [self.exact[rows], hi], 1), self.m - 1)
        self.tau[rows] = tau
        keep = lo < tau[:, None]
        order = X.sort_rows(xp, xp.where(keep, lo, INF))
        keep = X.take_rows(xp, keep, order)
        self.lo[rows] = xp.where(keep, X.take_rows(xp, lo, order), INF)
        self.hi[rows] = xp.where(keep, X.take_rows(xp, hi, order), INF)
        self.col[rows] = xp.where(keep, X.take_rows(xp, col, order), -1)

    def bounds(self) -> tuple[Any, Any, Any]:
        """(lo, hi, col) per row over exact values (lo = hi, col = -1) and candidates: the partial
        state that ranks merge (concatenated along columns) before :func:`resolve`."""
        neg = X.full(self.xp, self.exact.shape, -1, self.tau, "int64")
        return (
            X.concat(self.xp, [self.exact, self.lo], 1),
            X.concat(self.xp, [self.exact, self.hi], 1),
            X.concat(self.xp, [neg, self.col], 1),
        )


def squared_radii(
    x: Features,
    k: int,
    block_size: int,
    distributed: bool,
    group: Group,
    products: str,
    observe: Callable[[Block, Any], None] | None = None,
) -> torch.Tensor:
    """The exact squared distance of every sample of ``x`` to its k-th nearest other sample (float64,
    a torch tensor on the features' device): one walk over the block pairs i <= j, dealt to the ranks
    with ``distributed``, the ranks' bounds merged with one all-gather. ``observe(block, h)`` is shown
    each screened block (h: minus half the squared distances, the row's own entry -inf), once."""
    state = Radii(x, k, Screen(x, x, products), observe)
    rank, world = rank_and_world(group) if distributed else (0, 1)
    with ieee_float32(x.device):
        walk = sorted(blocks(x.n, x.n, block_size, symmetric=True), key=lambda b: b.i != b.j)
        for blk in mine(walk, rank, world):  # diagonal blocks first: each row's first block is contiguous
            state.visit(blk)
    bounds = state.bounds()
    if distributed and world > 1:
        merged = []
        for v in bounds:
            t = torch.cat(all_gather_uneven(X.to_torch(x.xp, v).to(x.device), group), dim=1)
            merged.append(t.numpy() if x.xp is np else t)
        bounds = tuple(merged)
    return X.to_torch(x.xp, resolve(x, *bounds, k)).to(x.device)


def resolve(x: Features, lo: Any, hi: Any, col: Any, k: int) -> Any:
    """Each row's exact (k+1)-th smallest squared distance (its own 0 included) from merged bounds."""
    xp = x.xp
    below = hi < X.kth(xp, lo, k)[:, None]  # certainly among the k smallest: no value needed
    tau = X.kth(xp, hi, k)
    exact = col < 0
    need = ~below & ~exact & (lo < tau[:, None])
    values = xp.where(exact, lo, INF)
    r, s = X.nonzero(xp, need)
    values[r, s] = exact_sq(x, r, x, col[r, s])
    values[below] = -INF
    return X.kth(xp, values, k)


def _by_row_then(xp: Any, r: Any, key: Any) -> Any:
    """Order sorting by row, then by ``key`` within a row."""
    if xp is np:
        return np.lexsort((key, r))
    first = xp.sort(key, stable=True).indices
    return first[xp.sort(r[first], stable=True).indices]


def _rank_in_row(xp: Any, r: Any) -> Any:
    """Position of each entry within its row's run (r sorted)."""
    if not len(r):
        return r
    index = X.arange(xp, len(r), r)
    new = X.concat(xp, [r[:1] >= r[:1], r[1:] != r[:-1]])
    starts = xp.where(new, index, 0)
    starts = np.maximum.accumulate(starts) if xp is np else xp.cummax(starts, dim=0).values
    return index - starts
