"""Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018).

``kid`` follows torch-fidelity / torchmetrics practice (mean and population std over random subsets);
``kid_full`` is the exact unbiased estimate over all samples, computed block by block.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from lightning_fid.engine._distributed import Group
from lightning_fid.engine._validation import ArrayLike, as_features, check_same_dim
from lightning_fid.metrics._jackknife import DEFAULT_GROUPS, Estimate, group_sizes
from lightning_fid.metrics._kernels import pair_sums, polynomial_kernel
from lightning_fid.metrics._kid_terms import subset_sums
from lightning_fid.metrics.base import Context, Metric, Needs, RunInfo, check_int

if TYPE_CHECKING:
    from lightning_fid.engine._stats import Statistics


def _mmd2_unbiased(
    x: torch.Tensor,
    y: torch.Tensor,
    block_size: int,
    distributed: bool,
    group: Group = None,
    real_term: float | None = None,
) -> float:
    """(sum_{i!=j} k(x_i,x_j))/(m(m-1)) + (same for y) - 2 sum_{i,j} k(x_i,y_j)/(m n).

    ``real_term`` is the first summand, when the caller has it from an earlier evaluation.
    """
    pairs = [(y, y, True), (x, y, False)] + ([(x, x, True)] if real_term is None else [])
    sums = pair_sums(pairs, polynomial_kernel, block_size, distributed, group)
    (yy, yy_diag), (xy, _) = sums[:2]
    if real_term is None:
        real_term = _real_term(*sums[2], x.shape[0])
    m, n = x.shape[0], y.shape[0]
    return real_term + (yy - yy_diag) / (n * (n - 1)) - 2.0 * xy / (m * n)


def _real_term(total: float, diagonal: float, m: int) -> float:
    return (total - diagonal) / (m * (m - 1))


def kid_real_terms(
    real_features: ArrayLike,
    n_fake: int,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    *,
    distributed: bool = False,
    group: Group = None,
) -> torch.Tensor:
    """The real-vs-real summand of each seeded KID subset (float64, one per subset).

    It depends on the real features, the generated count and the subsets only, so a training run
    computes it once and passes it to every :func:`kid` call as ``real_terms``: a third of the
    kernel work of each later evaluation.
    """
    x = as_features(real_features, "real_features")
    subset_size = min(subset_size, x.shape[0], n_fake)
    index = [ix for ix, _ in subset_indices(x.shape[0], n_fake, num_subsets, subset_size, seed)]
    return _real_terms(x, index, distributed, group)


def _real_terms(x: torch.Tensor, index: list[torch.Tensor], distributed: bool, group: Group) -> torch.Tensor:
    total, diagonal = subset_sums(x, x, index, None, distributed=distributed, group=group)
    m = len(index[0])
    return (total - diagonal) / (m * (m - 1))


def subset_indices(
    n_real: int, n_fake: int, num_subsets: int, subset_size: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The seeded subsets (without replacement) that :func:`kid` draws, identical on every rank."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num_subsets):
        ix = torch.randperm(n_real, generator=g)[:subset_size]
        iy = torch.randperm(n_fake, generator=g)[:subset_size]
        out.append((ix, iy))
    return out


def kid(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    *,
    distributed: bool = False,
    group: Group = None,
    real_terms: torch.Tensor | None = None,
) -> tuple[float, float]:
    """KID mean and population std over ``num_subsets`` seeded subsets of ``subset_size`` samples.

    Each term's kernel sums come subset by subset or from one walk over 2048 x 2048 blocks, whichever
    costs less (``_kid_terms``: at 100 subsets of 1000 out of 10k samples the walk, about twice as
    fast; the two differ only in the order of float64 additions). Rows are taken in the order given,
    so the same features and seed give the same value however they were gathered. With
    ``distributed`` (identical features on every rank), subsets or blocks are dealt to the ranks and
    the partial sums all-reduced: the result is bit-identical for any number of processes.
    ``real_terms`` (from :func:`kid_real_terms` with the same arguments) skips the real-vs-real sums.

    Raises:
        ValueError: ``num_subsets`` < 1, ``subset_size`` < 2, ``real_terms`` of another shape, bad features.
    """
    values, _ = _subset_values(
        real_features, fake_features, num_subsets, subset_size, seed, distributed, group, real_terms
    )
    return float(values.mean()), float(values.std(unbiased=False))


def kid_estimate(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    *,
    groups: int = DEFAULT_GROUPS,
    distributed: bool = False,
    group: Group = None,
    real_terms: torch.Tensor | None = None,
) -> tuple[Estimate, float]:
    """:func:`kid` (its :class:`~lightning_fid.metrics.Estimate` and the std over subsets) with the
    delete-a-group jackknife replicates of generated groups ``position % groups``: each replicate is
    the mean over the same subsets of the unbiased MMD^2 with that group's samples left out of every
    subset (an exact recomputation, from per-group kernel sums taken in the same pass).

    Raises:
        ValueError: as :func:`kid`, or ``groups`` below 2.
    """
    if groups < 2:
        raise ValueError(f"groups must be >= 2 for a jackknife, got {groups}")
    values, reps = _subset_values(
        real_features, fake_features, num_subsets, subset_size, seed, distributed, group, real_terms, groups
    )
    n_fake = as_features(fake_features, "fake_features").shape[0]
    return Estimate(float(values.mean()), reps, group_sizes(n_fake, groups)), float(values.std(unbiased=False))


def _subset_values(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    num_subsets: int,
    subset_size: int,
    seed: int,
    distributed: bool,
    group: Group,
    real_terms: torch.Tensor | None,
    groups: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each subset's unbiased MMD^2 and, with ``groups``, the (G,) delete-a-group replicates of their mean."""
    x = as_features(real_features, "real_features")
    y = as_features(fake_features, "fake_features")
    check_same_dim(x, y, "real_features", "fake_features")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    if subset_size < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    limit = min(x.shape[0], y.shape[0])
    if subset_size > limit:
        warnings.warn(
            f"KID subset_size={subset_size} exceeds the available samples (real: {x.shape[0]}, "
            f"fake: {y.shape[0]}); using subset_size={limit}. Values at different subset sizes are "
            "not comparable: generate more samples or lower kid_subset_size.",
            stacklevel=3,
        )
        subset_size = limit
    y = y.to(x.device)
    if real_terms is not None and real_terms.shape != (num_subsets,):
        raise ValueError(f"real_terms has shape {tuple(real_terms.shape)}, expected ({num_subsets},)")
    subsets = subset_indices(x.shape[0], y.shape[0], num_subsets, subset_size, seed)
    index_x, index_y, n = [ix for ix, _ in subsets], [iy for _, iy in subsets], subset_size
    opts = {"distributed": distributed, "group": group, "groups": groups}
    yy, yy_diagonal, *by_group_yy = subset_sums(y, y, index_y, None, **opts)
    xy, _, *by_group_xy = subset_sums(x, y, index_x, index_y, **opts)
    real = _real_terms(x, index_x, distributed, group) if real_terms is None else real_terms.to(x.device, torch.float64)
    values = real + (yy - yy_diagonal) / (n * (n - 1)) - 2.0 * xy / (n * n)  # _mmd2_unbiased per subset
    if not groups:
        return values, None
    # Leaving group g out of subset s keeps m' = n - m_sg generated samples: remove g's rows and columns
    # from the generated x generated sum (its off-diagonal part) and g's columns from the cross sum.
    gyy, gxy = by_group_yy[0], by_group_xy[0]  # (S, 3, G)
    counts = torch.stack([torch.bincount(iy % groups, minlength=groups) for iy in index_y]).to(values)
    rest = n - counts
    off = (yy - yy_diagonal)[:, None] - 2 * (gyy[:, 0] - gyy[:, 2]) + (gyy[:, 1] - gyy[:, 2])
    cross = xy[:, None] - gxy[:, 0]
    theta = real[:, None] + off / (rest * (rest - 1)).clamp(min=1) - 2.0 * cross / (n * rest).clamp(min=1)
    theta = torch.where(rest >= 2, theta, torch.full_like(theta, float("nan")))
    return values, theta.mean(0).cpu()


def kid_full(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    block_size: int = 2048,
    *,
    distributed: bool = False,
    group: Group = None,
) -> float:
    """Exact unbiased MMD^2 (cubic kernel) over all samples, in blocks; sets may differ in size."""
    x = as_features(real_features, "real_features")
    y = as_features(fake_features, "fake_features")
    check_same_dim(x, y, "real_features", "fake_features")
    return _mmd2_unbiased(x, y.to(x.device), block_size, distributed, group)


class KID(Metric):
    """Kernel Inception Distance (Binkowski et al. 2018), torch-fidelity's protocol: the mean and
    population std of the unbiased MMD^2 (cubic polynomial kernel) over seeded random subsets.

    Logs ``kid`` and ``kid_std`` (and ``kid_se`` with error bars, see :func:`kid_estimate`). The subsets'
    real-vs-real sums are computed once per run.

    Args:
        subsets: number of subsets (torch-fidelity: 100).
        subset_size: samples per subset (torch-fidelity: 1000); at most the generated and real counts.
        seed: seed of the subset draw (None: the run's noise seed).
        key: the logged key (default ``"kid"``; the std is ``<key>_std``).
        extractor: a network to use instead of Inception-v3.

    Raises:
        ValueError: an option out of range, or (before training) ``subset_size`` above the sample counts.
    """

    name = "kid"
    needs = Needs(features=True)

    def __init__(
        self,
        subsets: int = 100,
        subset_size: int = 1000,
        seed: int | None = None,
        *,
        key: str | None = None,
        extractor: nn.Module | None = None,
    ) -> None:
        super().__init__(key=key, extractor=extractor)
        self.subsets = check_int(subsets, "KID subsets", 1)
        self.subset_size = check_int(subset_size, "KID subset_size", 2)
        self.seed = None if seed is None else check_int(seed, "KID seed", 0)

    def keys(self, run: RunInfo | None = None) -> tuple[str, ...]:
        return (self.key, self.key + "_std")

    def check_run(self, run: RunInfo) -> None:
        if self.subset_size > run.smallest:
            raise ValueError(
                f"KID(subset_size={self.subset_size}) is larger than num_samples={run.smallest}: "
                f"raise num_samples or set KID(subset_size<={run.smallest})"
            )

    def check_reference(self, real: Statistics, run: RunInfo) -> None:
        if real.n is not None and real.n < self.subset_size:
            raise ValueError(
                f"KID(subset_size={self.subset_size}) is larger than the {real.n} real samples; "
                "lower subset_size or use more real data"
            )

    def compute(self, real: Statistics, fake: Statistics, context: Context) -> dict[str, float | Estimate]:
        n_fake = fake.features.shape[0]
        if self.subset_size > n_fake:
            raise ValueError(f"KID(subset_size={self.subset_size}) is larger than the {n_fake} generated samples")
        seed = context.seed if self.seed is None else self.seed
        # The real-vs-real sums of the fixed subsets do not change during a run: computed once, reused.
        key = ("real_terms", n_fake, seed)
        if key not in context.state:
            context.state[key] = kid_real_terms(
                real.features, n_fake, self.subsets, self.subset_size, seed, distributed=True, group=context.group
            )
        args = (real.features, fake.features, self.subsets, self.subset_size, seed)
        opts = {"distributed": True, "group": context.group, "real_terms": context.state[key]}
        if context.groups:  # error bars: the replicates come from the same kernel pass
            estimate, std = kid_estimate(*args, groups=context.groups, **opts)
            return {self.key: estimate, self.key + "_std": std}
        mean, std = kid(*args, **opts)
        return {self.key: mean, self.key + "_std": std}

    def error_keys(self, run: RunInfo | None = None) -> tuple[str, ...]:
        return (self.key,)  # kid_std is the spread over subsets, not a quality: no error bar
