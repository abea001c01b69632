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
  held: their radius becomes the k-th nearest neighbour outside g. :func:`widened_radii` reads those
  from each generated sample's 2k + 2 nearest neighbours (one more pass over the generated set, float32
  products, the kept pairs recomputed in float64), and the ball walk tests the widening band of each
  ball exactly. Keeping the full-set radii instead (no widening) measured 0.64 to 0.85 of the spread
  over redraws; with the widening the replicates are the delete-a-group recall itself, up to the 2k + 2
  kept neighbours (a group holding more than k + 2 of them is rare; the radius is then underestimated).
"""

from __future__ import annotations

import torch

from lightning_fid.engine._distributed import Group, all_reduce_packed, rank_and_world
from lightning_fid.engine._validation import ArrayLike
from lightning_fid.metrics._balls import ball_counts
from lightning_fid.metrics._blocks import DEFAULT_BLOCK_SIZE
from lightning_fid.metrics._jackknife import DEFAULT_GROUPS, Estimate, group_sizes, mean_estimate, per_group_sums
from lightning_fid.metrics.prdc import _prepare, _radii_of


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
    y: torch.Tensor, radii: torch.Tensor, k: int, groups: int, block_size: int, distributed: bool, group: Group
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per generated sample i and each of its k nearest neighbours' groups g (other than i's own): the
    radius of i's ball when g is left out, the distance to its k-th nearest neighbour outside g (at
    least ``radii[i]``). Returns ((N, k) float64 radii, (N, k) int64 groups, -1 where none)."""
    n, keep = y.shape[0], min(2 * k + 3, y.shape[0])  # self and 2k + 2 neighbours
    rank, world = rank_and_world(group) if distributed else (0, 1)
    a = y.to(torch.float32)
    sq = (a * a).sum(1)
    dist = torch.zeros(n, keep, dtype=torch.float64, device=y.device)
    index = torch.zeros(n, keep, dtype=torch.float64, device=y.device)
    for b, s in enumerate(range(0, n, block_size)):
        if b % world != rank:
            continue
        rows = slice(s, min(s + block_size, n))
        d2 = sq[rows, None] + sq[None, :] - 2 * (a[rows] @ a.T)  # float32: only picks the candidates
        cand = torch.topk(d2, keep, dim=1, largest=False).indices
        for c in range(rows.start, rows.stop, 256):  # the kept pairs in float64, 256 rows at a time
            part, own = cand[c - rows.start : c - rows.start + 256], slice(c, min(c + 256, rows.stop))
            exact = ((y[own, None, :].double() - y[part].double()) ** 2).sum(-1)
            exact[part == torch.arange(own.start, own.stop, device=y.device)[:, None]] = float("inf")  # self
            order = exact.argsort(dim=1)
            dist[own], index[own] = exact.gather(1, order).sqrt(), part.gather(1, order).double()
    if world > 1:
        dist, index = all_reduce_packed([dist, index], group)
    nbr = index.long()[:, : keep - 1] % groups  # the neighbours' groups, nearest first (self last: dropped)
    dist = dist[:, : keep - 1]
    own = torch.arange(n, device=y.device) % groups
    alt_r = torch.zeros(n, k, dtype=torch.float64, device=y.device)
    alt_g = torch.full((n, k), -1, dtype=torch.int64, device=y.device)
    for j in range(k):
        g = nbr[:, j]
        outside = (nbr != g[:, None]).cumsum(1) >= k  # the k-th neighbour outside g and beyond
        first = torch.where(outside.any(1), outside.float().argmax(1), torch.full_like(g, dist.shape[1] - 1))
        alt_r[:, j] = torch.maximum(dist.gather(1, first[:, None])[:, 0], radii.to(dist))
        alt_g[:, j] = torch.where(g == own, torch.full_like(g, -1), g)
    return alt_r, alt_g


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
    with delete-a-group jackknife replicates (see the module docstring; recall's keep the radii).

    Raises:
        ValueError: as :func:`~lightning_fid.metrics.precision_recall`, or ``groups`` below 2.
    """
    groups = _check_groups(groups)
    r, f, rr, k, opts = _prepare(
        real_features, fake_features, k, real_radii, True, (block_size, distributed, group, products)
    )
    fr = _radii_of(f, k, opts)
    y = torch.as_tensor(f.data)
    alt = widened_radii(y, fr, k, groups, opts["block_size"], distributed, group)
    fake_hits, _, _, _, in_fake_g, extra_g = ball_counts(r, f, rr, fr, False, False, opts, groups, alt)
    sizes = group_sizes(f.n, groups)
    precision = mean_estimate(per_group_sums((fake_hits > 0).double(), groups), sizes)
    return precision, _covered(in_fake_g, sizes, extra_g)


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
