"""Error bars of the k-NN manifold metrics: jackknife replicates from per-group ball counts.

The real set (its balls and their radii) is the fixed reference; generated sample ``i`` belongs to
group ``i % G``. From one walk over the distance blocks (:func:`~lightning_fid.metrics._balls.ball_counts`
with ``groups``):

- precision (generated samples inside a real ball) and density (real balls holding each generated
  sample, / k) are means over generated samples: each replicate is the same mean over the other
  groups' samples, an exact delete-a-group jackknife;
- coverage (real balls holding a generated sample): real ball j stays covered without group g when a
  sample of another group lies in it; exact as well;
- recall (real samples inside a generated ball): real sample j stays covered without group g when a
  ball of another group holds it, where leaving g out *widens* the balls whose k nearest neighbours g
  held: their radius grows towards the k-th nearest neighbour outside g. :func:`widened_radii` reads
  those from each generated sample's nearest neighbours (:func:`neighbour_count` of them, 9 at k = 3
  and G = 10), which :class:`Neighbours` collects from the blocks of the walk that finds the generated
  radii (no second pass); a row whose list runs out is measured against every sample. The ball walk
  tests the widening band of each ball exactly. A replicate that leaves k or fewer generated samples
  is undefined (NaN, so the SE is NaN).

  The widening is *shrunk* by :func:`widening_shrink` (0.734 at k = 3, G = 10). A k-NN radius is a
  local order statistic, and the jackknife over-counts the variance of order statistics (Efron 1982,
  the sample median; Shao & Wu 1989): a ball rarely loses more than one of its k neighbours to a
  deleted group, so locally this is the delete-one jackknife, whose variance estimate for a k-th
  order statistic is 2x the truth at k = 1. Measured on recall: full widening gave 1.25 to 1.46 times
  the spread over redraws at N >= 2000, no widening 0.64 to 0.85. Under a local Poisson model (ball
  volumes are sums of exponential spacings, each neighbour in a uniformly random group) the expected
  jackknife variance of the k-th neighbour's volume is an exact multiple of its variance,
  :func:`order_statistic_inflation`; shrinking each widening by its inverse square root makes that
  variance unbiased (to first order in the radius). Recall's calibration is in README and
  ``benchmarks/calibration.py``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch

from lightning_fid.engine._distributed import Group, all_reduce_packed, rank_and_world
from lightning_fid.engine._validation import ArrayLike
from lightning_fid.metrics import _xp as X
from lightning_fid.metrics._balls import ball_counts
from lightning_fid.metrics._blocks import DEFAULT_BLOCK_SIZE, Block, Features
from lightning_fid.metrics._jackknife import DEFAULT_GROUPS, Estimate, group_sizes, mean_estimate, per_group_sums
from lightning_fid.metrics._knn import squared_radii
from lightning_fid.metrics.prdc import _prepare


def _covered(counts: torch.Tensor, sizes: torch.Tensor, extra: torch.Tensor | None = None) -> Estimate:
    """Fraction of real samples with a positive count, and without each group's (G, N_real) share
    (``extra``: covered without group g by a widened ball)."""
    total = counts.sum(0)
    value = float((total > 0).double().mean())
    kept = (total[None, :] - counts) > 0
    if extra is not None:
        kept |= extra > 0
    return Estimate(value, kept.double().mean(1).cpu(), sizes)


def widened_radii(
    y: Features, dist: torch.Tensor, index: torch.Tensor, radii: torch.Tensor, k: int, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per generated sample i and each of its k nearest neighbours' groups g (other than i's own): the
    radius of i's ball when g is left out, the distance to its k-th nearest neighbour outside g (at
    least ``radii[i]``), with the widening shrunk by :func:`widening_shrink`. ``dist`` / ``index``: each
    sample's :func:`neighbour_count` nearest others, nearest first (:class:`Neighbours`); a row whose
    list holds fewer than k samples outside g (g held most of them) is measured against every sample
    outside g. Returns ((N, k) float64 radii, inf where fewer than k samples are left, and (N, k)
    int64 groups, -1 where none)."""
    n = dist.shape[0]
    nbr = index % groups  # the neighbours' groups, nearest first
    own = torch.arange(n, device=dist.device) % groups
    alt_r = torch.zeros(n, k, dtype=torch.float64, device=dist.device)
    alt_g = torch.full((n, k), -1, dtype=torch.int64, device=dist.device)
    shrink, base = widening_shrink(k, groups), radii.to(dist)
    for j in range(k):
        g = nbr[:, j]
        outside = (nbr != g[:, None]).cumsum(1) >= k  # the k-th neighbour outside g and beyond
        found = outside.any(1)
        kth = dist.gather(1, outside.float().argmax(1)[:, None])[:, 0]
        if not bool(found.all()):  # the list ran out: measure those rows against every sample outside g
            rows = torch.nonzero(~found)[:, 0]
            kth[rows] = _kth_outside(y, rows, g[rows], k, groups)
        alt_r[:, j] = base + shrink * (torch.maximum(kth, base) - base)
        alt_g[:, j] = torch.where(g == own, torch.full_like(g, -1), g)
    return alt_r, alt_g


def neighbour_count(k: int, groups: int, n: int) -> int:
    """How many nearest neighbours :func:`widened_radii` reads per sample: enough to hold k + 1 outside
    a left-out group on average (k + 1 over the share (G - 1) / G), plus k + 1 to spare."""
    return min(n - 1, math.ceil((k + 1) * groups / (groups - 1)) + k + 1)


def _kth_outside(y: Features, rows: torch.Tensor, left_out: torch.Tensor, k: int, groups: int) -> torch.Tensor:
    """Distance of each sample ``rows[r]`` to its k-th nearest other sample outside group
    ``left_out[r]`` (inf when fewer than k are left), in the features' precision, 64 rows at a time."""
    data = X.to_torch(y.xp, y.data).to(rows.device)
    ids = torch.arange(y.n, device=rows.device)
    out = torch.empty(rows.shape[0], dtype=torch.float64, device=rows.device)
    for s in range(0, rows.shape[0], 64):
        r, g = rows[s : s + 64], left_out[s : s + 64]
        d = torch.cdist(data[r].double(), data.double()).to(torch.float64)
        d[(ids[None, :] % groups == g[:, None]) | (ids[None, :] == r[:, None])] = math.inf
        out[s : s + 64] = d.kthvalue(k, dim=1).values if d.shape[1] >= k else math.inf
    return out


def widening_shrink(k: int, groups: int) -> float:
    """The factor on each ball's widening that makes the jackknife variance of its volume unbiased:
    ``order_statistic_inflation(k, groups) ** -0.5`` (see the module docstring)."""
    return order_statistic_inflation(k, groups) ** -0.5


@lru_cache(maxsize=64)
def order_statistic_inflation(k: int, groups: int) -> float:
    """E[jackknife variance] / variance of the k-th nearest neighbour's ball volume, exactly, under a
    local Poisson model: volumes V_1 < V_2 < ... are sums of unit exponential spacings and each
    neighbour is in a uniformly random one of ``groups`` groups. Deleting group g moves V_k to
    V_(k + m_g), m_g the group's members before the k-th non-member; with D_g = V_(k+m_g) - V_k,
    E[D_g D_h | m] = m_g m_h + min(m_g, m_h), so E[v_J] = (G-1)^2 / G (E[m^2 + m] - E[m_g m_h +
    min(m_g, m_h)]), m negative binomial, and Var V_k = k. The joint law of (m_g, m_h) is walked
    exactly over label sequences (g, h or another group) until their mass is below 1e-16.
    2 at k = 1 (the delete-one jackknife of a minimum), 1.854 at k = 3 and 1.754 at k = 5 for G = 10."""
    p = 1.0 / groups
    states = {(0, 0, 0, 0): 1.0}  # (non-members of g seen, of h seen, m_g, m_h): probability
    cross = 0.0
    while states and sum(states.values()) > 1e-16:
        nxt: dict[tuple[int, int, int, int], float] = {}
        for (a, b, mg, mh), pr in states.items():
            if a >= k and b >= k:
                cross += pr * (mg * mh + min(mg, mh))
                continue
            for key, q in (
                ((a, min(b + 1, k), mg + (a < k), mh), p),  # a member of g
                ((min(a + 1, k), b, mg, mh + (b < k)), p),  # a member of h
                ((min(a + 1, k), min(b + 1, k), mg, mh), 1 - 2 * p),  # another group
            ):
                if q > 0:
                    nxt[key] = nxt.get(key, 0.0) + pr * q
        states = nxt
    mean = k * p / (1 - p)
    second = k * p / (1 - p) ** 2 + mean**2
    return (groups - 1) ** 2 / groups * (second + mean - cross) / k


class Neighbours:
    """Each generated sample's ``keep`` nearest others, read from the blocks of the walk that finds
    the generated set's own radii (:func:`~lightning_fid.metrics._knn.squared_radii` shows each
    screened block to :meth:`visit`): no second pass over the generated x generated products.

    Every block offers each of its rows, and each of its columns, its ``keep`` nearest by the screened
    values, in the row's slot for that column block: the candidates do not depend on how blocks are
    dealt to processes. :meth:`nearest` keeps the candidates within float32 rounding of each row's
    ``keep``-th smallest value, computes their distances (in the features' precision) and takes the nearest ``keep``
    (ties by candidate order): the same on any number of processes. Replicate radii need no bit-exact
    ties."""

    def __init__(self, n: int, keep: int, block_size: int, device: torch.device) -> None:
        self.keep = keep
        width = len(range(0, n, block_size)) * keep
        self.index = torch.zeros(n, width, dtype=torch.float64, device=device)  # candidate + 1 (0: none)
        self.value = torch.zeros(n, width, dtype=torch.float64, device=device)  # its screened squared distance

    def visit(self, blk: Block, h: Any) -> None:
        """Take the nearest of one block (h: minus half squared distances, the own entry -inf)."""
        h = h if isinstance(h, torch.Tensor) else torch.from_numpy(h)
        same = blk.i == blk.j
        for rows, cols, slot, part in [(blk.rows, blk.cols, blk.j, h)] + (
            [] if same else [(blk.cols, blk.rows, blk.i, h.T)]
        ):
            m = min(self.keep, part.shape[1] - same)
            if m >= 1:
                found, pick = part.topk(m, 1)  # torch's topk: 20x numpy's argpartition at 2048 x 2048
                where = slice(slot * self.keep, slot * self.keep + m)
                self.index[rows, where] = (pick + cols.start + 1).to(self.index)
                self.value[rows, where] = -2.0 * found.to(self.value)

    def nearest(self, y: Features, distributed: bool, group: Group) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, keep) float64 distances (ascending) and indices, after every block was visited, in the
        features' precision: these only move replicate radii, which need no bit-exact ties."""
        index, value = self.index, self.value
        if distributed and rank_and_world(group)[1] > 1:  # each slot was filled on one process: the sum merges
            index, value = all_reduce_packed([index, value], group)
        sq = X.to_torch(y.xp, y.sq).to(index.device, torch.float64)
        cand = _near_candidates(index.long() - 1, value, sq, self.keep, y.dim)
        data = X.to_torch(y.xp, y.data).to(cand.device)
        dist = torch.empty(cand.shape, dtype=torch.float64, device=cand.device)
        step = max(1, 2**24 // (cand.shape[1] * y.dim))  # rows at a time: 128 MB of gathered features
        for s in range(0, y.n, step):  # in the features' precision (float32: about 1e-6 relative)
            diff = data[cand[s : s + step].clamp(min=0)]  # in place from here
            diff -= data[s : s + step, None, :]
            dist[s : s + step] = torch.linalg.vector_norm(diff, dim=-1)
        dist = torch.where(cand >= 0, dist, torch.full_like(dist, math.inf))
        order = dist.argsort(dim=1, stable=True)[:, : self.keep]
        return dist.gather(1, order), cand.gather(1, order)


def _near_candidates(cand: torch.Tensor, value: torch.Tensor, sq: torch.Tensor, keep: int, dim: int) -> torch.Tensor:
    """The candidates (-1: none) within float32 rounding of each row's ``keep``-th smallest value,
    in slot order, packed to the left: (N, L) with L the most any row keeps. A float32 squared distance
    |a|^2 + |b|^2 - 2 a.b is within 2 (d + 2) u (|a|^2 + |b|^2) of the exact one (u = 2^-24); twice
    that covers rounding the features to float32 as well."""
    rows = torch.arange(cand.shape[0], device=cand.device)[:, None]
    value = torch.where((cand >= 0) & (cand != rows), value, torch.full_like(value, math.inf))
    slack = 4 * (dim + 2) * 2.0**-24 * (sq + sq.max())
    limit = value.kthvalue(min(keep, value.shape[1]), dim=1).values + 2 * slack
    near = value <= limit[:, None]
    # stable: near candidates first, each row's in slot order
    order = torch.argsort((~near).to(torch.int8), dim=1, stable=True)[:, : max(int(near.sum(1).max()), 1)]
    return torch.where(near.gather(1, order), cand.gather(1, order), torch.full_like(order, -1))


def _check_groups(groups: int) -> int:
    if groups < 2:
        raise ValueError(f"groups must be >= 2 for a jackknife, got {groups}")
    return groups


def precision_recall_estimate(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    k: int = 3,
    *,
    groups: int = DEFAULT_GROUPS,
    real_radii: ArrayLike | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    distributed: bool = False,
    group: Group = None,
    products: str = "float32",
) -> tuple[Estimate, Estimate]:
    """:func:`~lightning_fid.metrics.precision_recall` as two :class:`~lightning_fid.metrics.Estimate`
    with delete-a-group jackknife replicates (see the module docstring: recall's balls widen where the
    left-out group held a neighbour, by a shrunk amount).

    Raises:
        ValueError: as :func:`~lightning_fid.metrics.precision_recall`, or ``groups`` below 2.
    """
    groups = _check_groups(groups)
    r, f, rr, k, opts = _prepare(
        real_features, fake_features, k, real_radii, True, (block_size, distributed, group, products)
    )
    near = Neighbours(f.n, neighbour_count(k, groups, f.n), opts["block_size"], f.device)
    fr = X.sqrt(squared_radii(f, k, **opts, observe=near.visit))  # the walk shows its blocks to `near`
    alt = widened_radii(f, *near.nearest(f, distributed, group), fr, k, groups)
    fake_hits, _, _, _, in_fake_g, extra_g = ball_counts(r, f, rr, fr, False, False, opts, groups, alt)
    sizes = group_sizes(f.n, groups)
    precision = mean_estimate(per_group_sums((fake_hits > 0).double(), groups), sizes)
    recall = _covered(in_fake_g, sizes, extra_g)
    # without a group, k or fewer generated samples have no k-th neighbour: that replicate is undefined
    undefined = (f.n - sizes) <= k
    return precision, Estimate(recall.value, recall.replicates.masked_fill(undefined, math.nan), sizes)


def density_coverage_estimate(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    k: int = 5,
    *,
    groups: int = DEFAULT_GROUPS,
    real_radii: ArrayLike | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    distributed: bool = False,
    group: Group = None,
    products: str = "float32",
) -> tuple[Estimate, Estimate]:
    """:func:`~lightning_fid.metrics.density_coverage` as two :class:`~lightning_fid.metrics.Estimate`
    with exact delete-a-group jackknife replicates (see the module docstring).

    Raises:
        ValueError: as :func:`~lightning_fid.metrics.density_coverage`, or ``groups`` below 2.
    """
    groups = _check_groups(groups)
    r, f, rr, k, opts = _prepare(
        real_features, fake_features, k, real_radii, False, (block_size, distributed, group, products)
    )
    fake_hits, _, _, hits_g, _, _ = ball_counts(r, f, rr, None, True, True, opts, groups)
    sizes = group_sizes(f.n, groups)
    density = mean_estimate(per_group_sums(fake_hits, groups), sizes, per=k)
    return density, _covered(hits_g, sizes)
