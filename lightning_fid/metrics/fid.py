"""Fréchet distance between Gaussians fitted to features (FID), through symmetric eigendecompositions.

tr sqrt(S1 S2) equals the sum of square roots of the eigenvalues of the symmetric PSD matrix
S1^{1/2} S2 S1^{1/2}. Two ``eigh``/``eigvalsh`` calls in float64 replace scipy's general ``sqrtm``
(pytorch-fid) and torch's general ``eigvals`` (torchmetrics): no complex numbers, no imaginary parts
to discard, and S1^{1/2} depends on the reference set only, so it is computed once per run.

The cached reference factor may be any F with F F^T = S1: the eigenvalues of F^T S2 F are those of
S1 S2. ``reference_factor`` returns the lower Cholesky factor when S1 is positive definite, which on
CPU lets both products be triangular (BLAS trmm, half the flops of a general product).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from scipy.linalg import eigh as scipy_eigh
from scipy.linalg.blas import dtrmm
from torch import nn

from lightning_fid.engine._validation import ArrayLike, as_tensor, check_finite
from lightning_fid.metrics._jackknife import Estimate
from lightning_fid.metrics.base import Context, Metric, Needs, RunInfo

if TYPE_CHECKING:
    from lightning_fid.engine._stats import Statistics


def _statistic(x: ArrayLike, name: str, ndim: int, device: torch.device | None) -> torch.Tensor:
    t = as_tensor(x, name)
    if t.ndim != ndim:
        shape = "(d,)" if ndim == 1 else "(d, d)"
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if ndim == 2 and t.shape[0] != t.shape[1]:
        raise ValueError(f"{name} must be a square (d, d) covariance, got {tuple(t.shape)}")
    check_finite(t, name)
    return t.to(device=device, dtype=torch.float64)


#: relative tolerance for "symmetric" and "positive semi-definite": covariances saved in float32
#: (EDM, some pytorch-fid files) carry rounding of about 1e-7 of their largest entry.
PSD_TOLERANCE = 1e-5


def check_symmetric(s: torch.Tensor, name: str) -> None:
    """Raise unless ``s`` is symmetric within :data:`PSD_TOLERANCE` of its largest entry."""
    scale = float(s.abs().max())
    asymmetry = float((s - s.T).abs().max())
    if asymmetry > PSD_TOLERANCE * scale:
        raise ValueError(
            f"{name} is not symmetric (max |S - S^T| = {asymmetry:.3g}, largest entry {scale:.3g}): not a covariance"
        )


def check_psd_eigenvalues(eigenvalues: torch.Tensor, name: str, floor: float = 0.0) -> None:
    """Raise if an eigenvalue is negative beyond rounding (a covariance is positive semi-definite):
    below -(:data:`PSD_TOLERANCE` x the largest magnitude + ``floor``, an absolute rounding level)."""
    scale = float(eigenvalues.abs().max()) if eigenvalues.numel() else 0.0
    smallest = float(eigenvalues.min()) if eigenvalues.numel() else 0.0
    if smallest < -(PSD_TOLERANCE * scale + floor):
        raise ValueError(
            f"{name} is not positive semi-definite (eigenvalue {smallest:.3g}, largest {scale:.3g}): not a covariance"
        )


def sqrtm_psd(sigma: ArrayLike, name: str = "sigma") -> torch.Tensor:
    """Symmetric PSD square root of a covariance via ``eigh`` (negative rounding clamped to 0; a
    negative eigenvalue beyond rounding raises)."""
    s = _statistic(sigma, name, 2, None)
    check_symmetric(s, name)
    s = (s + s.T) / 2
    w, v = torch.linalg.eigh(s)
    check_psd_eigenvalues(w, name)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def reference_factor(sigma: ArrayLike) -> torch.Tensor:
    """A factor F with F F^T = sigma, to cache per reference set: lower Cholesky if positive definite,
    else the symmetric PSD root (singular covariances, e.g. fewer samples than dimensions)."""
    s = _statistic(sigma, "sigma", 2, None)
    check_symmetric(s, "sigma")
    s = (s + s.T) / 2
    factor, info = torch.linalg.cholesky_ex(s)
    return factor if int(info) == 0 else sqrtm_psd(s)


def _congruence(factor: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """F^T S2 F, with two triangular BLAS products when F is lower triangular and on the CPU."""
    if factor.device.type == "cpu" and not bool(factor.triu(1).any()):
        # Transposed views are Fortran-ordered, so BLAS reads them without copies: F = U^T with
        # U upper triangular, and S2 (symmetric) equals its transpose.
        u = factor.numpy().T
        b = dtrmm(1.0, u, s2.numpy().T, side=1, lower=0, trans_a=1)  # S2 U^T = S2 F
        return torch.from_numpy(dtrmm(1.0, u, b, side=0, lower=0, overwrite_b=1))  # U (S2 F) = F^T S2 F
    return factor.T @ s2 @ factor


def _inputs(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike, sigma1_sqrt: ArrayLike | None
) -> tuple[torch.Tensor, ...]:
    """The four statistics and the reference factor as checked float64 tensors on ``sigma1``'s device."""
    device = sigma1.device if isinstance(sigma1, torch.Tensor) else None
    m1 = _statistic(mu1, "mu1", 1, device)
    s1 = _statistic(sigma1, "sigma1", 2, device)
    m2 = _statistic(mu2, "mu2", 1, device)
    s2 = _statistic(sigma2, "sigma2", 2, device)
    d = m1.shape[0]
    for name, t in (("sigma1", s1), ("mu2", m2), ("sigma2", s2)):
        if t.shape[0] != d:
            raise ValueError(f"dimension mismatch: mu1 has {d} features but {name} has shape {tuple(t.shape)}")
    check_symmetric(s1, "sigma1")
    if sigma1_sqrt is None:
        factor = sqrtm_psd(s1, "sigma1")
    else:
        factor = _statistic(sigma1_sqrt, "sigma1_sqrt", 2, device)
        if factor.shape[0] != d:
            raise ValueError(f"sigma1_sqrt has shape {tuple(factor.shape)}, expected ({d}, {d})")
    check_symmetric(s2, "sigma2")
    return m1, s1, m2, s2.contiguous(), factor


def _value(m1: torch.Tensor, s1: torch.Tensor, m2: torch.Tensor, s2: torch.Tensor, eig: torch.Tensor) -> float:
    """FID from the statistics and the eigenvalues of F^T S2 F, checked (never NaN, never below 0).

    A covariance from uncentred sums carries rounding of about eps (|mu2|^2 + tr S2) per entry: for
    identical generated samples (a collapsed generator) S2 is that rounding alone, and F^T S2 F's
    eigenvalues (|F|^2 <= tr S1) may be that small and negative. Such a matrix is zero, not "not PSD"."""
    floor = (
        16 * m2.numel() * torch.finfo(torch.float64).eps * float(torch.trace(s1)) * float(m2.dot(m2) + torch.trace(s2))
    )
    check_psd_eigenvalues(eig, "sigma2", floor)
    diff = m1 - m2
    traces = torch.trace(s1) + torch.trace(s2)
    fid = diff.dot(diff) + traces - 2 * eig.clamp(min=0).sqrt().sum()
    value = float(fid)
    if value != value:  # NaN cannot come from finite inputs, but never return one silently
        raise FloatingPointError("FID evaluated to NaN from finite statistics; please report this as a bug")
    bound = rounding_bound(eig, float(traces))
    if value < -bound:  # FID is a squared distance: below 0 beyond rounding is a bug, never a number
        raise FloatingPointError(f"FID evaluated to {value:.3g} < 0 beyond rounding; please report this as a bug")
    # Equal distributions give a difference of equal large numbers: within rounding of 0, it is 0.
    return 0.0 if abs(value) <= bound else value


def frechet_distance(
    mu1: ArrayLike,
    sigma1: ArrayLike,
    mu2: ArrayLike,
    sigma2: ArrayLike,
    sigma1_sqrt: ArrayLike | None = None,
) -> float:
    """FID = ||mu1-mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1^{1/2} S2 S1^{1/2}), in float64.

    ``sigma1_sqrt`` is a cached factor of ``sigma1``: its symmetric root (:func:`sqrtm_psd`) or any F
    with F F^T = sigma1 (:func:`reference_factor`). With it, one evaluation costs one ``eigvalsh`` and
    two matrix products. Computed on ``sigma1``'s device.
    """
    m1, s1, m2, s2, factor = _inputs(mu1, sigma1, mu2, sigma2, sigma1_sqrt)
    # eigvalsh reads one triangle only: symmetric up to rounding is all it needs. F^T S2 F has the
    # inertia of S2 (F invertible), so a negative eigenvalue beyond rounding means S2 is not PSD.
    return _value(m1, s1, m2, s2, torch.linalg.eigvalsh(_congruence(factor, s2)))


def _inverse_root(factor: torch.Tensor, s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigenvalues L of M = F^T S2 F and F M^{-1/2} F^T = R R^T with R = F V L^{-1/4}, over the
    eigenvalues above rounding (d eps of the largest). On the CPU through LAPACK's divide-and-conquer
    ``syevd`` from scipy (torch's CPU ``eigh`` took 1.6x as long at d = 2048 in our measurements), a
    triangular product for a Cholesky factor and a symmetric rank-k product (BLAS trmm, syrk)."""
    m = _congruence(factor, s2)
    cpu = m.device.type == "cpu"
    if cpu:
        w, v = (torch.from_numpy(a) for a in scipy_eigh(m.numpy(), driver="evd", check_finite=False))
    else:
        w, v = torch.linalg.eigh(m)
    keep = w > w.abs().max() * w.numel() * torch.finfo(w.dtype).eps
    scaled = v[:, keep] * w[keep].pow(-0.25)
    if not cpu:
        root = factor @ scaled
        return w, root @ root.T
    if not bool(factor.triu(1).any()):  # F lower triangular: F x = U^T x with U = F^T (Fortran-ordered view)
        root = dtrmm(1.0, factor.numpy().T, scaled.numpy(), side=0, lower=0, trans_a=1)
    else:
        root = (factor @ scaled).numpy()
    return w, torch.from_numpy(root @ root.T)  # root @ root.T: syrk


def frechet_estimate(
    mu1: ArrayLike,
    sigma1: ArrayLike,
    mu2: ArrayLike,
    sigma2: ArrayLike,
    group_moments: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    sigma1_sqrt: ArrayLike | None = None,
) -> Estimate:
    """:func:`frechet_distance` with its linearised delete-a-group jackknife replicates.

    ``group_moments`` are the generated set's float64 (counts (G,), sums (G, d), outer sums (G, d, d))
    per group; ``mu2`` / ``sigma2`` its merged moments. Leaving group g out changes the moments by
    (dmu_g, dS_g); the replicate is FID + grad . (dmu_g, dS_g), with the gradient of the Fréchet
    distance in (mu2, S2) taken from the eigendecomposition F^T S2 F = V L V^T that the value needs
    anyway: 2 (mu2 - mu1) for the mean and I - F V L^{-1/2} V^T F^T for the covariance (d tr sqrt(M)
    = 1/2 tr(M^{-1/2} dM)). The cost over the value alone: ``eigh`` instead of ``eigvalsh``, two d x d
    products and G inner products, O(G d^2); an exact jackknife would need G more eigendecompositions.
    Eigenvalues within rounding of 0 (fewer samples than dimensions) are left out of L^{-1/2}: the
    perturbations of a rank-deficient covariance stay in its range. ``benchmarks/calibration.py``
    measures how well the standard error matches the spread over independent draws.

    Raises:
        ValueError: statistics that do not fit (as :func:`frechet_distance`), or group moments of another
            dimension.
    """
    m1, s1, m2, s2, factor = _inputs(mu1, sigma1, mu2, sigma2, sigma1_sqrt)
    counts, sums, outer = (t.to(device=s2.device, dtype=torch.float64) for t in group_moments)
    d = m1.shape[0]
    if sums.ndim != 2 or sums.shape[1] != d or outer.shape != (sums.shape[0], d, d) or counts.shape != sums.shape[:1]:
        raise ValueError(f"group moments of shapes {counts.shape}, {sums.shape}, {outer.shape} do not fit d = {d}")
    w, inverse_root = _inverse_root(factor, s2)
    value = _value(m1, s1, m2, s2, w)
    grad_sigma = torch.eye(d, dtype=torch.float64, device=s2.device) - inverse_root
    n, total, second = counts.sum(), sums.sum(0), outer.sum(0)
    rest = n - counts  # samples left when a group is deleted
    mean = total / n
    means = (total - sums) / rest.clamp(min=2)[:, None]
    # tr(grad_sigma S) of each delete-a-group covariance, from uncentred sums: (tr(A O) - n m^T A m) / (n - 1)
    flat = grad_sigma.reshape(-1)
    quad = ((means @ grad_sigma) * means).sum(1)
    traces = ((second.reshape(-1) @ flat) - outer.reshape(counts.shape[0], -1) @ flat - rest * quad) / (rest - 1)
    full = ((second.reshape(-1) @ flat) - n * (mean @ grad_sigma @ mean)) / (n - 1)
    reps = value + 2 * ((means - mean) @ (m2 - m1)) + traces - full
    reps = torch.where(rest >= 2, reps, torch.full_like(reps, float("nan")))
    return Estimate(value, reps, counts)


def rounding_bound(eigenvalues: torch.Tensor, traces: float) -> float:
    """How far below 0 rounding alone can push the FID of two equal distributions.

    ``eigvalsh`` finds each eigenvalue of F^T S2 F to within delta = d * eps * ||F^T S2 F|| (backward
    stable), so each square root is off by at most min(sqrt(delta), delta / (2 sqrt(lambda))): the
    first term dominates for the zero eigenvalues of a singular covariance (N <= d), where a tiny
    rounding error in lambda becomes its square root. Twice their sum, plus the rounding of the traces.
    """
    eps = torch.finfo(eigenvalues.dtype).eps
    lam = eigenvalues.clamp(min=0)
    delta = eigenvalues.numel() * eps * max(float(eigenvalues.abs().max()) if eigenvalues.numel() else 0.0, 1e-300)
    per_root = torch.minimum(torch.full_like(lam, delta**0.5), delta / (2 * lam.sqrt().clamp(min=1e-300)))
    return 2 * float(per_root.sum()) + 1e-9 * max(1.0, traces)


def warn_if_rank_deficient(n: int, dim: int, what: str = "features") -> None:
    """Warn that fewer samples than dimensions give a singular covariance.

    Python's default warning filter shows a given message once per calling location, so an
    evaluation repeated every epoch warns once, not every epoch.
    """
    if n < dim:
        warnings.warn(
            f"FID from {n} {what} in {dim} dimensions: the covariance is singular (n < d), so the value is "
            f"finite but strongly biased. Use at least {dim} samples for numbers comparable with papers.",
            stacklevel=2,
        )


class FID(Metric):
    """Fréchet Inception Distance (Heusel et al. 2017) on Inception-v3 pool features (or ``extractor``'s).

    Logs ``fid`` (and ``fid_se`` with error bars, see :func:`frechet_estimate`). Exactly pytorch-fid's /
    torch-fidelity's formula in float64 (see :func:`frechet_distance`); the reference factor is computed
    once per run.

    Args:
        key: the logged key (default ``"fid"``).
        extractor: a network to use instead of Inception-v3.
    """

    name = "fid"
    needs = Needs(moments=True)

    def __init__(self, *, key: str | None = None, extractor: nn.Module | None = None) -> None:
        super().__init__(key=key, extractor=extractor)

    def prepare(self, real: Statistics, context: Context) -> None:
        context.state["factor"] = reference_factor(real.sigma)

    def error_keys(self, run: RunInfo | None = None) -> tuple[str, ...]:
        return (self.key,)

    def compute(self, real: Statistics, fake: Statistics, context: Context) -> dict[str, float | Estimate]:
        if fake.n is not None:  # a statistics file may not record its count
            warn_if_rank_deficient(fake.n, fake.dim, "generated samples")
        factor = context.state.get("factor")
        if context.groups and fake.group_moments is not None:  # error bars: the value and its replicates
            estimate = frechet_estimate(real.mu, real.sigma, fake.mu, fake.sigma, fake.group_moments, factor)
            return {self.key: estimate}
        return {self.key: frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma, sigma1_sqrt=factor)}
