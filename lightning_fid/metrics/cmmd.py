"""CMMD (Jayasumana et al. 2024): biased MMD^2 with a Gaussian kernel on CLIP embeddings, x1000.

Exactly google-research's ``cmmd/distance.py`` (V-statistic, diagonals included, sigma=10,
scale=1000), but the kernel sums are accumulated in float64 block by block: every kernel value lies
in [e^-0.02, 1] for unit-norm embeddings, so the result is a small difference of numbers near 1, and
30,000 x 30,000 embeddings need no 30,000 x 30,000 matrix.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from lightning_fid.engine._distributed import Group
from lightning_fid.engine._validation import ArrayLike, as_features, check_same_dim
from lightning_fid.metrics._jackknife import DEFAULT_GROUPS, Estimate, group_sizes
from lightning_fid.metrics._kernels import gaussian_kernel, pair_group_sums, pair_sums
from lightning_fid.metrics.base import Context, Metric, Needs, RunInfo, check_positive

if TYPE_CHECKING:
    from lightning_fid.engine._stats import Statistics


def cmmd(
    x: ArrayLike,
    y: ArrayLike,
    sigma: float = 10.0,
    scale: float = 1000.0,
    *,
    block_size: int = 2048,
    distributed: bool = False,
    group: Group = None,
    real_sum: float | None = None,
) -> float:
    """scale * (mean k(x,x') + mean k(y,y') - 2 mean k(x,y)) on embeddings as given (not re-normalised).
    ``real_sum``: sum k(x, x') from :func:`real_kernel_sum` (the same x and sigma), to skip that third
    of the kernel work."""
    a, b = _inputs(x, y, sigma, scale)
    pairs = [(b, b, True), (a, b, False)] + ([(a, a, True)] if real_sum is None else [])
    (yy, _), (xy, _), *rest = pair_sums(pairs, gaussian_kernel(sigma), block_size, distributed, group)
    xx = rest[0][0] if real_sum is None else real_sum
    m, n = a.shape[0], b.shape[0]
    return scale * (xx / (m * m) + yy / (n * n) - 2.0 * xy / (m * n))


def real_kernel_sum(
    x: ArrayLike, sigma: float = 10.0, *, block_size: int = 2048, distributed: bool = False, group: Group = None
) -> float:
    """sum_{i,j} k(x_i, x_j) of the reference embeddings: fixed for a run, so computed once."""
    a, _ = _inputs(x, x, sigma, 1.0)
    return pair_sums([(a, a, True)], gaussian_kernel(sigma), block_size, distributed, group)[0][0]


def _inputs(x: ArrayLike, y: ArrayLike, sigma: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    a = as_features(x, "x", min_samples=1)
    b = as_features(y, "y", min_samples=1)
    check_same_dim(a, b, "x", "y")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    return a, b.to(a.device)


def cmmd_estimate(
    x: ArrayLike,
    y: ArrayLike,
    sigma: float = 10.0,
    scale: float = 1000.0,
    *,
    groups: int = DEFAULT_GROUPS,
    block_size: int = 2048,
    distributed: bool = False,
    group: Group = None,
    real_sum: float | None = None,
) -> Estimate:
    """:func:`cmmd` of generated embeddings ``y`` against ``x`` with its delete-a-group jackknife
    replicates (groups ``position % groups`` of y): each replicate is the exact V-statistic without that
    group, from per-group kernel sums taken in the same pass over the blocks (no second kernel pass).

    Raises:
        ValueError: as :func:`cmmd`, or ``groups`` below 2.
    """
    if groups < 2:
        raise ValueError(f"groups must be >= 2 for a jackknife, got {groups}")
    a, b = _inputs(x, y, sigma, scale)
    pairs = [(b, b, True), (a, b, False)] + ([(a, a, True)] if real_sum is None else [])
    (yy, _, gyy), (xy, _, gxy), *rest = pair_group_sums(
        pairs, gaussian_kernel(sigma), groups, block_size, distributed, group
    )
    xx = rest[0][0] if real_sum is None else real_sum
    m, n = a.shape[0], b.shape[0]
    value = scale * (xx / (m * m) + yy / (n * n) - 2.0 * xy / (m * n))
    sizes = group_sizes(n, groups)
    rest = n - sizes
    # without group g: its rows and columns leave the generated x generated sum, its columns the cross sum
    reps = scale * (xx / (m * m) + (yy - 2 * gyy[0] + gyy[1]) / rest**2 - 2.0 * (xy - gxy[0]) / (m * rest))
    return Estimate(value, torch.where(rest > 0, reps, torch.full_like(reps, math.nan)), sizes)


class CMMD(Metric):
    """CMMD (Jayasumana et al. 2024): the biased MMD^2 with a Gaussian kernel on CLIP ViT-L/14@336px
    embeddings, times ``scale``. Logs ``cmmd`` (and ``cmmd_se`` with error bars: :func:`cmmd_estimate`).

    On another encoder (``extractor=``) it is an RBF-kernel MMD, not CMMD: give it another ``key``
    (e.g. ``CMMD(extractor=encoder, key="mmd")``) so the logs say so.

    Args:
        sigma: the kernel bandwidth (reference: 10).
        scale: the output scale (reference: 1000).
        key: the logged key (default ``"cmmd"``).
        extractor: a network to use instead of CLIP.
    """

    name = "cmmd"
    needs = Needs(network="clip", features=True)

    def __init__(
        self, sigma: float = 10.0, scale: float = 1000.0, *, key: str | None = None, extractor: nn.Module | None = None
    ) -> None:
        super().__init__(key=key, extractor=extractor)
        self.sigma = check_positive(sigma, "CMMD sigma")
        self.scale = check_positive(scale, "CMMD scale")

    def error_keys(self, run: RunInfo | None = None) -> tuple[str, ...]:
        return (self.key,)

    def compute(self, real: Statistics, fake: Statistics, context: Context) -> dict[str, float | Estimate]:
        opts = {"distributed": True, "group": context.group}
        # The reference's own kernel sum does not change during a run: computed once, reused.
        key = ("real_sum", real.features.shape[0])
        if key not in context.state:
            context.state[key] = real_kernel_sum(real.features, self.sigma, **opts)
        opts["real_sum"] = context.state[key]
        if context.groups:
            return {
                self.key: cmmd_estimate(
                    real.features, fake.features, self.sigma, self.scale, groups=context.groups, **opts
                )
            }
        return {self.key: cmmd(real.features, fake.features, self.sigma, self.scale, **opts)}
