"""FID-infinity (Chong & Forsyth 2020): the bias-free FID, extrapolated to infinitely many samples.

FID_N is close to linear in 1/N, with a model-dependent slope, so comparing models at one N can rank
them wrongly. Following dgm-eval's ``compute_FD_infinity`` (the authors' ``FID_IS_infinity`` with the
low end clamped for small sets): FID at ``num_points`` sizes ``np.linspace(min(5000, max(N // 10, 2)),
N, num_points).astype(int32)``, each from a subset of the generated features drawn without
replacement, reference statistics fixed; then a least-squares fit FID_N = a + b / N, and a is returned.

Differences from the references, both deliberate: subsets come from a seeded ``torch.Generator``
(the references use an unseeded numpy generator, so their value changes from run to run), and each
FID is our float64 ``frechet_distance`` with the reference factor computed once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from lightning_fid.engine._distributed import Group, all_reduce_packed, rank_and_world
from lightning_fid.engine._validation import ArrayLike, as_features, as_tensor, check_finite
from lightning_fid.metrics.base import Context, Metric, Needs, RunInfo, check_int
from lightning_fid.metrics.fid import frechet_distance, reference_factor

if TYPE_CHECKING:
    from lightning_fid.engine._stats import Statistics


def sample_sizes(n: int, num_points: int = 15, min_n: int | None = None) -> np.ndarray:
    """The subset sizes: ``num_points`` evenly spaced over [min_n, n], truncated to integers as the
    references do (default ``min_n``: dgm-eval's ``min(5000, max(n // 10, 2))``)."""
    low = min(5000, max(n // 10, 2)) if min_n is None else min_n
    if not 2 <= low <= n:
        raise ValueError(f"min_n must be between 2 and the number of generated samples ({n}), got {low}")
    return np.linspace(low, n, num_points).astype("int32")


def subsets(n: int, sizes: np.ndarray, seed: int = 0) -> list[torch.Tensor]:
    """One index set per size, drawn without replacement from a generator seeded once with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g)[: int(size)] for size in sizes]


def fit_intercept(sizes: ArrayLike, fids: ArrayLike) -> float:
    """Least-squares a of fid = a + b / size (the prediction at 1/N = 0), in float64."""
    x = 1.0 / np.asarray(sizes, dtype=np.float64)
    y = np.asarray(fids, dtype=np.float64)
    xc = x - x.mean()
    slope = float(xc @ (y - y.mean()) / (xc @ xc))
    return float(y.mean() - slope * x.mean())


def _moments(x: torch.Tensor, index: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased (N-1) covariance of ``x[index]`` in float64, two passes over row chunks (a
    float64 copy of 50k x 2048 features would take 800 MB)."""
    parts = index.to(x.device).split(chunk)
    mu = sum(x[p].to(torch.float64).sum(0) for p in parts) / index.numel()
    cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    for p in parts:
        xc = x[p].to(torch.float64) - mu
        cov.addmm_(xc.T, xc)
    return mu, cov / (index.numel() - 1)


def fid_infinity(
    real_mu: ArrayLike,
    real_sigma: ArrayLike,
    fake_features: ArrayLike,
    *,
    num_points: int = 15,
    min_n: int | None = None,
    seed: int = 0,
    real_factor: ArrayLike | None = None,
    distributed: bool = False,
    group: Group = None,
) -> float:
    """FID extrapolated to N = infinity from ``num_points`` seeded subsets of ``fake_features``.

    ``fake_features`` are all generated features in global sample order (identical on every rank);
    ``real_factor`` is the cached :func:`reference_factor` of ``real_sigma``. With ``distributed``,
    the sizes are dealt to the ranks and the FIDs all-reduced: each is computed once, and every rank
    returns the same value. Returns the intercept a of the fit FID_N = a + b / N.
    """
    y = as_features(fake_features, "fake_features", min_samples=3)
    if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)) or num_points < 2:
        raise ValueError(f"num_points must be an integer >= 2 (a line needs two points), got {num_points!r}")
    d = y.shape[1]
    mu, sigma = as_tensor(real_mu, "real_mu"), as_tensor(real_sigma, "real_sigma")
    if tuple(mu.shape) != (d,) or tuple(sigma.shape) != (d, d):
        raise ValueError(
            f"dimension mismatch: fake_features have {d} features but real_mu has shape {tuple(mu.shape)} "
            f"and real_sigma {tuple(sigma.shape)}"
        )
    check_finite(mu, "real_mu")
    check_finite(sigma, "real_sigma")
    factor = reference_factor(sigma) if real_factor is None else real_factor
    sizes = sample_sizes(y.shape[0], num_points, min_n)
    if len(set(sizes.tolist())) < 2:
        raise ValueError(f"the subset sizes {sizes.tolist()} need at least two distinct values: lower min_n")
    rank, world = rank_and_world(group) if distributed else (0, 1)
    fids = torch.zeros(num_points, dtype=torch.float64, device=y.device)
    for i, index in enumerate(subsets(y.shape[0], sizes, seed)):
        if i % world == rank:
            mu_i, cov_i = _moments(y, index)
            fids[i] = frechet_distance(mu, sigma, mu_i, cov_i, sigma1_sqrt=factor)
    if distributed and world > 1:
        (fids,) = all_reduce_packed([fids], group)
    return fit_intercept(sizes, fids.cpu().numpy())


class FIDInfinity(Metric):
    """FID-infinity (Chong & Forsyth 2020): FID extrapolated to infinitely many samples from
    ``points`` seeded subsets of the generated set, as dgm-eval computes it. Logs ``fid_inf``.

    Args:
        points: number of subset sizes of the fit (reference: 15).
        seed: seed of the subset draw (None: the run's noise seed).
        key: the logged key (default ``"fid_inf"``).
        extractor: a network to use instead of Inception-v3.

    Raises:
        ValueError: ``points`` below 2, or (before training) too few samples for two subset sizes.
    """

    name = "fid_inf"
    needs = Needs(moments=True, features=True)

    def __init__(
        self, points: int = 15, seed: int | None = None, *, key: str | None = None, extractor: nn.Module | None = None
    ) -> None:
        super().__init__(key=key, extractor=extractor)
        self.points = check_int(points, "FIDInfinity points", 2)
        self.seed = None if seed is None else check_int(seed, "FIDInfinity seed", 0)

    def check_run(self, run: RunInfo) -> None:
        n = run.smallest
        if n < 3 or len(set(sample_sizes(n, self.points).tolist())) < 2:
            raise ValueError(
                f"FIDInfinity needs subsets of at least two sizes, which num_samples={n} cannot give: "
                "raise num_samples (FID-infinity is meant for thousands of samples)"
            )

    def prepare(self, real: Statistics, context: Context) -> None:
        context.state["factor"] = reference_factor(real.sigma)

    def compute(self, real: Statistics, fake: Statistics, context: Context) -> dict[str, float]:
        seed = context.seed if self.seed is None else self.seed
        value = fid_infinity(
            real.mu,
            real.sigma,
            fake.features,
            num_points=self.points,
            seed=seed,
            real_factor=context.state.get("factor"),
            distributed=True,
            group=context.group,
        )
        return {self.key: value}
