"""Ball membership of generated samples in real balls and of real samples in generated balls, exactly.

A sample y lies in the ball of x with radius r when sqrt(D) <= r (precision / recall) or sqrt(D) < r
(density / coverage and the ``prdc`` package), D the exact squared distance of ``_screen.exact_sq``.
Blocks of generated rows against real columns are screened (see ``_screen``): with w the block's
error bound, an entry with h < r^2 (1 - SLACK) / 2 - w is inside under either comparison, one with
h > r^2 (1 + SLACK) / 2 + w is outside (SLACK covers the rounding of sqrt and of r^2); entries in
between are computed exactly and compared exactly as above. Entries whose answer is already known
(a generated sample inside some real ball, for precision) are skipped unless counts are needed
(density counts every ball).

With ``groups`` (error bars) the per-real counts are also kept per jackknife group of the generated
samples (row position % groups): ``real_hits_g`` (coverage) and ``real_in_fake_g`` (recall), (G, N_real).
Recall then skips a real sample only once balls of two different groups hold it (leaving one group out
cannot uncover it), so each group's count is exact as to being > 0. Leaving group g out also widens the
balls whose k nearest neighbours it held: given those radii (``alternatives``: per generated sample up
to k (radius, group) pairs), ``extra_g`` (G, N_real) marks the real samples that only such a widened
ball of another group holds, from the exact distances of the entries in the widening band.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from lightning_fid.engine._distributed import all_reduce_packed, rank_and_world
from lightning_fid.metrics import _xp as X
from lightning_fid.metrics._blocks import Block, Features, blocks, ieee_float32, mine
from lightning_fid.metrics._screen import SLACK, Screen, exact_sq

BIG = 2.0**100  # larger than any screened half distance (squared norms <= 2^80 on the float32 path)


class Balls:
    """Counts accumulated over the (fake block, real block) pairs given to :meth:`visit`.

    ``fake_hits``: per generated sample, the real balls holding it; ``real_hits``: per real sample,
    the generated samples in its ball; ``real_in_fake`` (with ``fake_radii``): per real sample, the
    generated balls holding it. With ``counts`` the first two are exact counts; without, every count
    is exact as to being > 0 (all precision and recall need), and ``real_hits`` is not kept.
    """

    def __init__(
        self,
        real: Features,
        fake: Features,
        real_radii: Any,
        fake_radii: Any | None,
        strict: bool,
        counts: bool,
        screen: Screen,
        groups: int = 0,
        alternatives: tuple[Any, Any] | None = None,
    ) -> None:
        self.real, self.fake, self.xp, self.screen = real, fake, real.xp, screen
        self.rr, self.fr, self.strict, self.counts = real_radii, fake_radii, strict, counts
        self.t_real = _half_squares(self.xp, real_radii)
        self.t_fake = None if fake_radii is None else _half_squares(self.xp, fake_radii)
        zeros = lambda n: X.full(self.xp, (n,), 0.0, real.sq)  # noqa: E731
        self.fake_hits, self.real_hits, self.real_in_fake = zeros(fake.n), zeros(real.n), zeros(real.n)
        self.groups = groups
        self.real_hits_g = X.full(self.xp, (groups, real.n), 0.0, real.sq)
        self.real_in_fake_g = X.full(self.xp, (groups, real.n), 0.0, real.sq)
        self.extra_g = X.full(self.xp, (groups, real.n), 0.0, real.sq)
        self.alt = alternatives  # (radii (N_fake, k) float64, groups (N_fake, k), -1: none)
        self.t_alt = None if alternatives is None else _half_squares(self.xp, alternatives[0].max(1))

    def visit(self, blk: Block) -> None:
        """One block: generated rows ``blk.rows`` against real columns ``blk.cols``."""
        xp, rows, cols = self.xp, blk.rows, blk.cols
        h = self.screen.block(self.fake, rows, self.real, cols, same=False)  # minus half squared distances
        w = 0.5 * self.screen.kappa * (float(self.fake.sq[rows].max()) + float(self.real.sq[cols].max()))
        w += self.screen.eta
        inside, maybe = self._tests(h, self.t_real[cols], w, columns=True)
        per_fake = X.count(xp, inside, 1)
        per_real = X.count(xp, inside, 0) if self.counts else None
        labels = X.arange(xp, h.shape[0], h) + rows.start
        labels = labels % self.groups if self.groups else None
        per_real_g = _by_group(xp, inside, labels, self.groups) if self.counts and self.groups else None
        maybe &= ~inside
        if not self.counts:  # precision: only generated samples not yet known to be in a real ball
            maybe &= ((self.fake_hits[rows] + per_fake) == 0)[:, None]
        undecided = [X.nonzero(xp, maybe)]
        if self.t_fake is not None:  # recall: only real samples not yet known to be in a generated ball
            inside_fake, maybe_fake = self._tests(h, self.t_fake[rows], w, columns=False)
            in_fake = X.count(xp, inside_fake, 0)
            maybe_fake &= ~inside_fake
            if self.groups:  # known for every replicate once balls of two groups hold the sample
                in_fake_g = _by_group(xp, inside_fake, labels, self.groups)
                open_ = (((self.real_in_fake_g[:, cols] + in_fake_g) > 0).sum(0) < 2)[None, :]
                maybe_fake &= open_
                if self.t_alt is not None:  # the widening bands of the balls, where that can matter
                    _, band = self._tests(h, self.t_alt[rows], w, columns=False)
                    band = X.nonzero(xp, band & ~inside_fake & open_)
            else:
                maybe_fake &= ((self.real_in_fake[cols] + in_fake) == 0)[None, :]
            undecided.append(X.nonzero(xp, maybe_fake))
        if self.screen.float32 and sum(len(r) for r, _ in undecided) > h.shape[0] * h.shape[1] // 64:
            self.screen.fall_back()  # large norms with small differences, heavy ties: float64 from here on
            return self.visit(blk)
        self.fake_hits[rows] += per_fake
        if self.counts:
            self.real_hits[cols] += per_real
            if self.groups:
                self.real_hits_g[:, cols] += per_real_g
        if self.t_fake is not None:
            self.real_in_fake[cols] += in_fake
            if self.groups:
                self.real_in_fake_g[:, cols] += in_fake_g
        for kind, (r, c) in zip(("real", "fake"), undecided):
            if len(r):
                self._exact(r + rows.start, c + cols.start, kind)
        if self.groups and self.t_fake is not None and self.t_alt is not None and len(band[0]):
            self._widened(band[0] + rows.start, band[1] + cols.start)

    def _widened(self, r: Any, c: Any) -> None:
        """Real samples c outside generated ball r but inside its widened radius without group g."""
        xp = self.xp
        dist = X.sqrt(exact_sq(self.fake, r, self.real, c))
        outside = dist > self.fr[r]
        radii, groups = self.alt[0][r], self.alt[1][r]
        for j in range(radii.shape[1]):
            hit = outside & (groups[:, j] >= 0) & (dist <= radii[:, j])
            index = groups[:, j][hit] * self.real.n + c[hit]
            _scatter_add(xp, self.extra_g.reshape(-1), index, X.to64(xp, hit[hit]))

    def _tests(self, h: Any, half_sq: Any, w: float, columns: bool) -> tuple[Any, Any]:
        """(certainly inside, not certainly outside) for one threshold per column or per row."""
        xp = self.xp
        inner = X.as_dtype(xp, -(half_sq * (1.0 - SLACK) - w), h, math.inf)
        outer = X.as_dtype(xp, -(half_sq * (1.0 + SLACK) + w), h, -math.inf)
        inner, outer = (inner[None, :], outer[None, :]) if columns else (inner[:, None], outer[:, None])
        return h > inner, h >= outer

    def _exact(self, r: Any, c: Any, kind: str) -> None:
        """Decide entries (generated r, real c) from their exact distances, as the comparison says."""
        xp = self.xp
        dist = X.sqrt(exact_sq(self.fake, r, self.real, c))
        radius = self.rr[c] if kind == "real" else self.fr[r]
        hit = X.to64(xp, (dist < radius) if self.strict else (dist <= radius))
        if kind == "real":
            _scatter_add(xp, self.fake_hits, r, hit)
            if self.counts:
                _scatter_add(xp, self.real_hits, c, hit)
                if self.groups:
                    _scatter_add(xp, self.real_hits_g.reshape(-1), (r % self.groups) * self.real.n + c, hit)
        else:
            _scatter_add(xp, self.real_in_fake, c, hit)
            if self.groups:
                _scatter_add(xp, self.real_in_fake_g.reshape(-1), (r % self.groups) * self.real.n + c, hit)


def ball_counts(
    real: Features,
    fake: Features,
    real_radii: torch.Tensor,
    fake_radii: torch.Tensor | None,
    strict: bool,
    counts: bool,
    opts: dict[str, Any],
    groups: int = 0,
    alternatives: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, ...]:
    """(fake_hits, real_hits, real_in_fake) of :class:`Balls` as float64 tensors on the features'
    device, from one walk over the (fake block, real block) pairs; with ``distributed`` the pairs are
    dealt to the ranks and the counts summed with one all-reduce. With ``groups`` also
    (real_hits_g, real_in_fake_g, extra_g), each (G, N_real); ``alternatives`` as :class:`Balls`."""
    host = (lambda t: t.cpu().numpy()) if real.xp is np else (lambda t: t.to(real.device))  # noqa: E731
    radii = host(real_radii), None if fake_radii is None else host(fake_radii)
    alt = None if alternatives is None else (host(alternatives[0]), host(alternatives[1]))
    balls = Balls(real, fake, *radii, strict, counts, Screen(real, fake, opts["products"]), groups, alt)
    rank, world = rank_and_world(opts["group"]) if opts["distributed"] else (0, 1)
    with ieee_float32(real.device):
        for blk in mine(blocks(fake.n, real.n, opts["block_size"]), rank, world):
            balls.visit(blk)
    kept = [balls.fake_hits, balls.real_hits, balls.real_in_fake]
    kept += [balls.real_hits_g, balls.real_in_fake_g, balls.extra_g] if groups else []
    out = [X.to_torch(real.xp, v).to(real.device) for v in kept]
    if opts["distributed"] and world > 1:
        out = all_reduce_packed(out, opts["group"])
    return tuple(out)


def _half_squares(xp: Any, radii: Any) -> Any:
    """r^2 / 2 per ball, capped at BIG (a ball that large holds every screened sample anyway)."""
    half = radii * radii * 0.5
    return half.clip(max=BIG) if xp is np else half.clamp(max=BIG)


def _by_group(xp: Any, mask: Any, labels: Any, groups: int) -> Any:
    """(G, columns) float64: per column, the True entries of the rows of each group."""
    return X.concat(xp, [X.count(xp, mask[labels == g], 0)[None] for g in range(groups)])


def _scatter_add(xp: Any, target: Any, index: Any, values: Any) -> None:
    if xp is np:
        np.add.at(target, index, values)
    else:
        target.index_add_(0, index, values)
