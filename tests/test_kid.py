"""KID against torch-fidelity's kid_features_to_metric and its mmd2 on identical subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.metric_kid import kernel_mmd, kid_features_to_metric

from lightning_fid.metrics import kid, kid_full
from lightning_fid.metrics.kid import subset_indices

TF_KWARGS = dict(
    rng_seed=0,
    verbose=False,
    kid_kernel="poly",
    kid_kernel_poly_degree=3,
    kid_kernel_poly_gamma=None,
    kid_kernel_poly_coef0=1,
)


def _features(rng, n, d, shift=0.0, dtype=np.float64):
    # non-negative like Inception pool3 features
    return (np.abs(rng.standard_normal((n, d))) * 0.4 + shift).astype(dtype)


def test_one_subset_of_all_samples_matches_torch_fidelity(rng):
    n, d = 300, 64
    x, y = _features(rng, n, d), _features(rng, n, d, 0.05)
    ref = kid_features_to_metric(
        torch.from_numpy(x), torch.from_numpy(y), kid_subsets=1, kid_subset_size=n, **TF_KWARGS
    )
    mean, std = kid(x, y, num_subsets=1, subset_size=n)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-9)
    assert std == 0.0
    assert mean > 1e-4  # the shift is visible


def test_float32_features_stay_exact(rng):
    """float32 features: our float64 sums stay within 1e-6 of the exact value (torch-fidelity fed the
    same features as float64); torch-fidelity's own float32 arithmetic drifts by ~1e-5."""
    n, d = 300, 64
    x, y = _features(rng, n, d, dtype=np.float32), _features(rng, n, d, 0.05, dtype=np.float32)
    exact = kid_features_to_metric(
        torch.from_numpy(x).double(), torch.from_numpy(y).double(), kid_subsets=1, kid_subset_size=n, **TF_KWARGS
    )["kernel_inception_distance_mean"]
    tf32 = kid_features_to_metric(
        torch.from_numpy(x), torch.from_numpy(y), kid_subsets=1, kid_subset_size=n, **TF_KWARGS
    )["kernel_inception_distance_mean"]
    ours = kid(x, y, num_subsets=1, subset_size=n)[0]
    assert ours == pytest.approx(exact, rel=1e-6)
    assert tf32 == pytest.approx(exact, rel=1e-4)


def test_subsets_match_torch_fidelity_mmd_on_the_same_subsets(rng):
    x, y = _features(rng, 400, 32), _features(rng, 350, 32, 0.03)
    mean, std = kid(x, y, num_subsets=7, subset_size=120, seed=3)
    ref = [kernel_mmd(x[ix.numpy()], y[iy.numpy()], **TF_KWARGS) for ix, iy in subset_indices(400, 350, 7, 120, seed=3)]
    assert mean == pytest.approx(np.mean(ref), rel=1e-9)
    assert std == pytest.approx(np.std(ref), rel=1e-9)  # population std, as torch-fidelity


def test_seeded_subsets_are_reproducible(rng):
    x, y = _features(rng, 200, 16), _features(rng, 200, 16, 0.02)
    a = kid(x, y, num_subsets=10, subset_size=50, seed=5)
    assert kid(torch.from_numpy(x), torch.from_numpy(y), num_subsets=10, subset_size=50, seed=5) == a
    assert kid(x, y, num_subsets=10, subset_size=50, seed=6) != a


def test_subset_shrinks_with_warning(rng):
    x, y = _features(rng, 80, 16), _features(rng, 60, 16, 0.02)
    with pytest.warns(UserWarning, match="subset_size=1000 exceeds .* using subset_size=60"):
        shrunk = kid(x, y, num_subsets=4, subset_size=1000)
    assert shrunk == kid(x, y, num_subsets=4, subset_size=60)


def _mmd2_unbiased_reference(x, y):
    """Direct numpy formula of the unbiased MMD^2 with the cubic kernel, sets of any size."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m, n = len(x), len(y)
    return (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.sum() / (m * n)
    )


@pytest.mark.parametrize("block_size", [7, 64, 4096])
def test_kid_full_blockwise_matches_direct_formula(rng, block_size):
    x, y = _features(rng, 150, 24), _features(rng, 110, 24, 0.04)
    assert kid_full(x, y, block_size=block_size) == pytest.approx(_mmd2_unbiased_reference(x, y), rel=1e-10)


def test_kid_full_equals_single_full_subset(rng):
    x, y = _features(rng, 90, 24), _features(rng, 90, 24, 0.04)
    assert kid_full(x, y, block_size=16) == pytest.approx(kid(x, y, 1, 90)[0], rel=1e-10)


@pytest.mark.parametrize(
    "x_shape, y_shape, kwargs, match",
    [
        ((10,), (10, 4), {}, "real_features must be a 2-D"),
        ((1, 4), (10, 4), {}, "at least 2 samples"),
        ((10, 4), (10, 5), {}, "feature dimension mismatch"),
        ((10, 4), (10, 4), {"num_subsets": 0}, "num_subsets"),
        ((10, 4), (10, 4), {"subset_size": 1}, "subset_size"),
    ],
)
def test_bad_inputs(x_shape, y_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kid(np.ones(x_shape), np.ones(y_shape), **kwargs)


def test_nan_features_are_rejected(rng):
    x, y = _features(rng, 20, 4), _features(rng, 20, 4)
    y[3, 2] = np.nan
    with pytest.raises(ValueError, match="fake_features contains 1 non-finite"):
        kid(x, y, 2, 10)
    with pytest.raises(ValueError, match="fake_features contains"):
        kid_full(x, y)


def test_cached_real_terms_give_bit_identical_values(rng):
    from lightning_fid.metrics.kid import kid_real_terms

    real = torch.from_numpy(rng.random((300, 16))).float()
    fake = torch.from_numpy(rng.random((250, 16)) * 1.05).float()
    terms = kid_real_terms(real, 250, 7, 50, seed=3)
    assert terms.shape == (7,) and terms.dtype == torch.float64
    assert kid(real, fake, 7, 50, 3, real_terms=terms) == kid(real, fake, 7, 50, 3)
    with pytest.raises(ValueError, match="real_terms has shape"):
        kid(real, fake, 8, 50, 3, real_terms=terms)


def test_kernel_walks_run_their_float32_grams_in_ieee_float32(rng, monkeypatch):
    """Called directly (outside the callback's precision guard), KID's and CMMD's kernel walks switch
    TF32 off themselves on the features' device, as the k-NN walks do (a no-op on the CPU)."""
    from contextlib import contextmanager

    from lightning_fid.metrics import _kernels, _kid_terms
    from lightning_fid.metrics.cmmd import cmmd
    from lightning_fid.metrics.kid import kid

    entered = []

    @contextmanager
    def recording(device):
        entered.append(torch.device(device).type)
        yield

    monkeypatch.setattr(_kernels, "ieee_float32", recording)
    monkeypatch.setattr(_kid_terms, "ieee_float32", recording)
    x = torch.from_numpy(rng.standard_normal((40, 8)).astype(np.float32))
    kid(x, x + 0.1, 3, 10, 0)
    assert entered and set(entered) == {"cpu"}
    entered.clear()
    unit = torch.nn.functional.normalize(x, dim=1)
    cmmd(unit, unit.flip(0))
    assert entered and set(entered) == {"cpu"}
