"""FID against pytorch-fid (scipy sqrtm) and torchmetrics (eigvals), on identical statistics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import gaussian_stats
from pytorch_fid.fid_score import calculate_frechet_distance
from torchmetrics.image.fid import _compute_fid

from lightning_fid.metrics import fid as fid_module
from lightning_fid.metrics import frechet_distance, reference_factor, sqrtm_psd

REL = 1e-6  # stated tolerance against both peers


def _peers(mu1, s1, mu2, s2):
    ref = calculate_frechet_distance(mu1, s1, mu2, s2)
    tm = float(_compute_fid(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2))))
    return ref, tm


@pytest.mark.parametrize("d", [64, pytest.param(2048, marks=pytest.mark.slow)])
def test_matches_pytorch_fid_and_torchmetrics(rng, d):
    mu1, s1 = gaussian_stats(rng, d, 3 * d)
    mu2, s2 = gaussian_stats(rng, d, 3 * d, shift=0.1, scale=1.2)
    ref, tm = _peers(mu1, s1, mu2, s2)
    plain = frechet_distance(mu1, s1, mu2, s2)
    with_root = frechet_distance(mu1, s1, mu2, s2, sigma1_sqrt=sqrtm_psd(s1))
    with_chol = frechet_distance(mu1, s1, mu2, s2, sigma1_sqrt=reference_factor(s1))
    for value in (plain, with_root, with_chol):
        assert value == pytest.approx(ref, rel=REL)
        assert value == pytest.approx(tm, rel=REL)
    assert ref > 1.0  # the sets really differ: a trivial 0 would not pass


def test_torch_inputs_and_numpy_inputs_agree(rng):
    mu1, s1 = gaussian_stats(rng, 32, 200)
    mu2, s2 = gaussian_stats(rng, 32, 200, shift=0.3)
    a = frechet_distance(mu1, s1, mu2, s2)
    b = frechet_distance(*(torch.from_numpy(x) for x in (mu1, s1, mu2, s2)))
    c = frechet_distance(*(torch.from_numpy(x).float() for x in (mu1, s1, mu2, s2)))
    assert a == pytest.approx(b, rel=1e-12)
    assert a == pytest.approx(c, rel=1e-5)


def test_identical_sets_give_zero(rng):
    mu, s = gaussian_stats(rng, 128, 1000)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-6
    assert abs(frechet_distance(mu, s, mu, s, sigma1_sqrt=reference_factor(s))) < 1e-6


def test_reference_factor_is_cholesky_or_root(rng):
    _, s = gaussian_stats(rng, 16, 100)
    f = reference_factor(s)
    assert torch.allclose(f @ f.T, torch.from_numpy(s), atol=1e-12)
    assert not bool(f.triu(1).any())  # positive definite: lower Cholesky factor
    x = rng.standard_normal((5, 16))  # rank 4: singular
    singular = np.cov(x, rowvar=False)
    r = reference_factor(singular)
    assert torch.allclose(r @ r.T, torch.from_numpy(singular), atol=1e-10)


def test_fewer_samples_than_dims_is_finite_nonnegative_and_warns(rng):
    d, n = 64, 20
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) + 0.5
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    value = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(value) and value >= 0
    ref = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert value == pytest.approx(ref, rel=1e-4)  # pytorch-fid adds eps to the diagonal here
    with pytest.warns(UserWarning, match="n < d"):
        fid_module.warn_if_rank_deficient(n, d)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # Python's default: once per message and calling line
        for _ in range(3):
            fid_module.warn_if_rank_deficient(n, d)  # one evaluation per epoch
    assert len(seen) == 1


@pytest.mark.parametrize("which", ["mu1", "sigma1", "mu2", "sigma2"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_statistic_is_named(rng, which, bad):
    mu1, s1 = gaussian_stats(rng, 8, 50)
    mu2, s2 = gaussian_stats(rng, 8, 50)
    args = {"mu1": mu1, "sigma1": s1, "mu2": mu2, "sigma2": s2}
    args[which] = args[which].copy()
    args[which].flat[3] = bad
    with pytest.raises(ValueError, match=f"{which} contains 1 non-finite"):
        frechet_distance(**args)


def test_shape_errors(rng):
    mu, s = gaussian_stats(rng, 8, 50)
    mu9, s9 = gaussian_stats(rng, 9, 50)
    with pytest.raises(ValueError, match=r"sigma1 must have shape \(d, d\)"):
        frechet_distance(mu, mu, mu, s)
    with pytest.raises(ValueError, match="mu1 must have shape"):
        frechet_distance(s, s, mu, s)
    with pytest.raises(ValueError, match="dimension mismatch"):
        frechet_distance(mu, s, mu9, s9)
    with pytest.raises(ValueError, match="square"):
        frechet_distance(mu, s[:, :5], mu, s)
    with pytest.raises(ValueError, match="sigma1_sqrt has shape"):
        frechet_distance(mu, s, mu, s, sigma1_sqrt=s9)
