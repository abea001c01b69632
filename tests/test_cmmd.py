"""CMMD against a float64 port of google-research's cmmd/distance.py, written here."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_fid.metrics import cmmd

SIGMA, SCALE = 10, 1000


def reference_mmd(x, y):
    """google-research/cmmd/distance.py `mmd`, ported from jax.numpy to float64 numpy line by line."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x_sqnorms = np.diag(np.matmul(x, x.T))
    y_sqnorms = np.diag(np.matmul(y, y.T))
    gamma = 1 / (2 * SIGMA**2)
    k_xx = np.mean(
        np.exp(-gamma * (-2 * np.matmul(x, x.T) + np.expand_dims(x_sqnorms, 1) + np.expand_dims(x_sqnorms, 0)))
    )
    k_xy = np.mean(
        np.exp(-gamma * (-2 * np.matmul(x, y.T) + np.expand_dims(x_sqnorms, 1) + np.expand_dims(y_sqnorms, 0)))
    )
    k_yy = np.mean(
        np.exp(-gamma * (-2 * np.matmul(y, y.T) + np.expand_dims(y_sqnorms, 1) + np.expand_dims(y_sqnorms, 0)))
    )
    return SCALE * (k_xx + k_yy - 2 * k_xy)


def _embeddings(rng, n, d, shift=0.0):
    e = rng.standard_normal((n, d)) + shift
    return e / np.linalg.norm(e, axis=1, keepdims=True)  # CLIP embeddings are unit-norm


@pytest.mark.parametrize("block_size", [13, 100, 2048])
def test_matches_reference_formula(rng, block_size):
    x, y = _embeddings(rng, 230, 48), _embeddings(rng, 170, 48, 0.15)
    ref = reference_mmd(x, y)
    assert cmmd(x, y, block_size=block_size) == pytest.approx(ref, rel=1e-9)
    assert ref > 0.01


def test_float32_embeddings_stay_close(rng):
    x, y = _embeddings(rng, 300, 64), _embeddings(rng, 300, 64, 0.1)
    assert cmmd(x.astype(np.float32), y.astype(np.float32)) == pytest.approx(reference_mmd(x, y), rel=1e-4)


def test_identical_sets_give_zero(rng):
    x = _embeddings(rng, 100, 32)
    assert abs(cmmd(x, x)) < 1e-9


def test_sigma_and_scale_are_used(rng):
    x, y = _embeddings(rng, 50, 16), _embeddings(rng, 60, 16, 0.3)
    base = cmmd(x, y)
    assert cmmd(x, y, scale=1.0) == pytest.approx(base / 1000, rel=1e-12)
    assert cmmd(x, y, sigma=1.0) != pytest.approx(base, rel=1e-3)
    with pytest.raises(ValueError, match="sigma must be a positive finite number"):
        cmmd(x, y, sigma=0.0)


def test_bad_inputs(rng):
    x = _embeddings(rng, 10, 8)
    with pytest.raises(ValueError, match="dimension mismatch"):
        cmmd(x, _embeddings(rng, 10, 9))
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="y contains 1 non-finite"):
        cmmd(x, bad)
    with pytest.raises(ValueError, match="x must be a 2-D"):
        cmmd(x[0], x)
