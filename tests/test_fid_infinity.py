"""FID-infinity against a float64 port of the authors' / dgm-eval's procedure on the same subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.dist import run_distributed

from lightning_fid.metrics import frechet_distance, reference_factor
from lightning_fid.metrics.fid_infinity import fid_infinity, fit_intercept, sample_sizes, subsets


def _features(seed=0, n=2000, d=16, shift=0.3):
    rng = np.random.default_rng(seed)
    mix = np.eye(d) + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d)
    real = rng.standard_normal((3 * n, d)) @ mix
    fake = (rng.standard_normal((n, d)) * 1.2 + shift) @ mix
    return real.mean(0), np.cov(real, rowvar=False), fake


def _reference(mu1, sigma1, fake, sizes, index_sets):
    """dgm-eval's compute_FD_infinity (scipy sqrtm FD, sklearn LinearRegression) on given subsets."""
    from scipy import linalg
    from sklearn.linear_model import LinearRegression

    fds = []
    for idx in index_sets:
        act = fake[idx.numpy()]
        mu2, sigma2 = np.mean(act, axis=0), np.cov(act, rowvar=False)
        covmean = linalg.sqrtm(sigma1.dot(sigma2)).real
        diff = mu1 - mu2
        fds.append(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
    reg = LinearRegression().fit(1 / sizes.reshape(-1, 1), np.array(fds).reshape(-1, 1))
    return reg.predict(np.array([[0]]))[0, 0], fds


def test_sample_sizes_follow_dgm_eval():
    # np.linspace(min(5000, max(N // 10, 2)), N, 15).astype('int32')
    assert sample_sizes(50_000).tolist() == np.linspace(5000, 50_000, 15).astype("int32").tolist()
    assert sample_sizes(50_000)[:3].tolist() == [5000, 8214, 11428]
    assert sample_sizes(10_000).tolist() == np.linspace(1000, 10_000, 15).astype("int32").tolist()
    assert sample_sizes(15, num_points=3).tolist() == [2, 8, 15]
    assert sample_sizes(1000, num_points=4, min_n=400).tolist() == [400, 600, 800, 1000]


def test_matches_reference_procedure_on_the_same_subsets():
    mu, sigma, fake = _features()
    sizes = sample_sizes(fake.shape[0])
    ref, ref_fids = _reference(mu, sigma, fake, sizes, subsets(fake.shape[0], sizes, seed=4))
    ours = fid_infinity(mu, sigma, fake, seed=4)
    assert ours == pytest.approx(ref, rel=1e-9)
    assert fit_intercept(sizes, ref_fids) == pytest.approx(ref, rel=1e-12)  # the closed-form fit is sklearn's
    assert 0 < ours < min(ref_fids)  # bias-free: below every finite-N FID (FID_N decreases with N here)


def test_cached_factor_float32_features_and_torch_inputs():
    mu, sigma, fake = _features(seed=1)
    base = fid_infinity(mu, sigma, fake, seed=0)
    factor = reference_factor(sigma)
    assert fid_infinity(torch.from_numpy(mu), torch.from_numpy(sigma), torch.from_numpy(fake), real_factor=factor) == (
        pytest.approx(base, rel=1e-12)
    )
    f32 = fake.astype(np.float32)
    assert fid_infinity(mu, sigma, f32) == pytest.approx(fid_infinity(mu, sigma, f32.astype(np.float64)), rel=1e-12)


def test_seed_determinism():
    mu, sigma, fake = _features(seed=2, n=800)
    a = fid_infinity(mu, sigma, fake, num_points=6, seed=11)
    assert fid_infinity(mu, sigma, fake, num_points=6, seed=11) == a
    assert fid_infinity(mu, sigma, fake, num_points=6, seed=12) != a
    # the largest subset is all samples: its FID is the plain FID whatever the seed
    full = frechet_distance(mu, sigma, fake.mean(0), np.cov(fake, rowvar=False))
    idx = subsets(800, sample_sizes(800, 6), seed=11)[-1]
    assert sorted(idx.tolist()) == list(range(800))
    assert full > a


def test_exact_line_is_recovered():
    assert fit_intercept([100, 200, 400, 800], [3 + 50 / n for n in (100, 200, 400, 800)]) == pytest.approx(3.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_points": 1}, "num_points must be an integer >= 2"),
        ({"min_n": 1}, "min_n must be between 2 and the number of generated samples \\(50\\)"),
        ({"min_n": 51}, "min_n must be between 2"),
        ({"min_n": 50}, "at least two distinct values"),
    ],
)
def test_bad_arguments(kwargs, match):
    mu, sigma, fake = _features(n=50, d=4)
    with pytest.raises(ValueError, match=match):
        fid_infinity(mu, sigma, fake, **kwargs)


def test_bad_features():
    mu, sigma, fake = _features(n=50, d=4)
    with pytest.raises(ValueError, match="dimension mismatch: fake_features have 3 features"):
        fid_infinity(mu, sigma, fake[:, :3])
    bad_sigma = sigma.copy()
    bad_sigma[0, 0] = np.inf
    with pytest.raises(ValueError, match="real_sigma contains 1 non-finite"):
        fid_infinity(mu, bad_sigma, fake)
    fake[3, 1] = np.nan
    with pytest.raises(ValueError, match="fake_features contains 1 non-finite"):
        fid_infinity(mu, sigma, fake)


def _worker(rank, world):
    mu, sigma, fake = _features(seed=3, n=600)
    return fid_infinity(mu, sigma, fake, num_points=7, seed=5, distributed=True)


@pytest.mark.multiprocess
def test_distributed_sizes_dealt_to_ranks_give_the_same_value(tmp_path):
    mu, sigma, fake = _features(seed=3, n=600)
    single = fid_infinity(mu, sigma, fake, num_points=7, seed=5)
    assert run_distributed(_worker, 2, tmp_path) == [single, single]  # each FID computed once: bit-identical
