"""Shared fixtures: seeded feature sets that look like Inception / CLIP features."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def gaussian_stats(rng: np.random.Generator, d: int, n: int, shift: float = 0.0, scale: float = 1.0):
    """Mean and covariance of n correlated Gaussian samples (well conditioned for n >> d)."""
    mix = np.eye(d) + 0.2 * rng.standard_normal((d, d)) / np.sqrt(d)
    x = (rng.standard_normal((n, d)) * scale) @ mix + shift
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.fixture(autouse=True)
def _no_references_from_other_tests():
    """Each test resolves its own references (the process-wide cache would share them across tests)."""
    from lightning_fid.engine._reference import forget_resolved

    forget_resolved()
