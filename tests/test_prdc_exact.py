"""k-NN metrics from float32 screening products against the float64 paths, on adversarial inputs.

Three references, all on identical features:
- ``products="float64"``: the same exact values, screened with float64 products: radii bit-identical,
  metric values identical;
- ``_blas64``: the float64 path before float32 screening (one BLAS block, |a|^2 + |b|^2 - 2 a.b):
  decisions identical wherever its own float64 rounding cannot decide them (data exact in float64,
  near-ties at 1e-9);
- ``_direct``: sum((a - b)^2) in float64 (int64 for integer data: exact), the definition itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_fid.metrics._blocks import Features
from lightning_fid.metrics._screen import U32, U64, Screen, exact_sq, kappa
from lightning_fid.metrics.prdc import (
    density_coverage,
    knn_radii,
    precision_recall,
    precision_recall_density_coverage,
)


def _blas64(real, fake, k):
    """The former float64 path in one block: BLAS Gram, (-2g + |a|^2) + |b|^2, clamped, own 0."""

    def sq(a, b, same):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        d = a @ b.T * -2.0 + np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :]
        d = np.maximum(d, 0.0)
        if same:
            np.fill_diagonal(d, 0.0)
        return d

    rr = np.sqrt(np.sort(sq(real, real, True), axis=1)[:, k])
    fr = np.sqrt(np.sort(sq(fake, fake, True), axis=1)[:, k])
    return rr, fr, np.sqrt(sq(fake, real, False))  # fake rows x real columns


def _direct(real, fake, k):
    """Distances as sum((a - b)^2): exact in int64 for integer features."""
    exact = np.issubdtype(np.asarray(real).dtype, np.integer)
    a, b = (np.asarray(real, np.int64), np.asarray(fake, np.int64)) if exact else (np.float64(real), np.float64(fake))
    sq = lambda u, v: ((u[:, None, :] - v[None, :, :]) ** 2).sum(-1)  # noqa: E731
    return np.sort(sq(a, a), axis=1)[:, k], np.sort(sq(b, b), axis=1)[:, k], sq(b, a)  # squared


def _metrics(rr, fr, d, k, squared=False):
    """All metrics from radii and (fake x real) distances, both comparisons."""
    n_fake = d.shape[0]
    if squared:  # exact integers: compare squared values
        rr, fr = rr.astype(np.float64), fr.astype(np.float64)
    le, lt = d <= rr[None, :], d < rr[None, :]
    return {
        "pr": (le.any(1).mean(), (d <= fr[:, None]).any(0).mean()),
        "dc": (lt.sum() / (k * n_fake), lt.any(0).mean()),
        "prdc": {
            "precision": lt.any(1).mean(),
            "recall": (d < fr[:, None]).any(0).mean(),
            "density": lt.sum() / (k * n_fake),
            "coverage": lt.any(0).mean(),
        },
    }


def _ours(real, fake, k, products="float32", block_size=64):
    kw = dict(block_size=block_size, products=products)
    return {
        "radii": knn_radii(real, k, **kw),
        "pr": precision_recall(real, fake, k, **kw),
        "dc": density_coverage(real, fake, k, **kw),
        "prdc": precision_recall_density_coverage(real, fake, k, **kw),
    }


def _same_as_float64(real, fake, k, block_size=64):
    """float32 screening equals float64 screening bit for bit; returns the result."""
    ours = _ours(real, fake, k, "float32", block_size)
    ref = _ours(real, fake, k, "float64", block_size)
    assert torch.equal(ours["radii"], ref["radii"])
    assert {key: v for key, v in ours.items() if key != "radii"} == {key: v for key, v in ref.items() if key != "radii"}
    return ours


def _approx(ours, expected):
    assert ours["pr"] == pytest.approx(expected["pr"], abs=1e-15)
    assert ours["dc"] == pytest.approx(expected["dc"], abs=1e-15)
    assert ours["prdc"] == pytest.approx(expected["prdc"], abs=1e-15)


@pytest.mark.parametrize("k", [1, 5])
def test_exact_ties_and_duplicates_in_integer_features(k):
    """Values in {0..3}: many exactly equal distances, duplicated rows, fakes equal to reals; every
    path computes these distances exactly, so all decisions must agree with the int64 definition."""
    rng = np.random.default_rng(0)
    real = rng.integers(0, 4, (220, 24))
    fake = rng.integers(0, 4, (190, 24))
    real[10:14] = real[3]  # duplicated samples: the k-th neighbour at distance exactly 0 (k = 1)
    fake[:30] = real[:30]  # generated copies of real samples
    ours = _same_as_float64(real, fake, k, block_size=50)
    rr2, fr2, d2 = _direct(real, fake, k)
    np.testing.assert_array_equal(ours["radii"].numpy(), np.sqrt(rr2))  # exact squared values, one sqrt
    if k <= 4:  # rows 3 and 10..13 are five copies: their first four neighbours are at 0
        assert float(ours["radii"][10]) == 0.0 and float(ours["radii"][3]) == 0.0
    _approx(ours, _metrics(rr2, fr2, d2, k, squared=True))
    rr, fr, d = _blas64(real, fake, k)  # exact in float64 too
    _approx(ours, _metrics(rr, fr, d, k))


@pytest.mark.parametrize("k", [1, 3])
def test_near_ties_at_the_radius(k):
    """Generated samples at distance radius * (1 -+ 1e-9) from a real sample: float32 cannot tell
    them apart, the exact values must: inside for -1e-9, outside for +1e-9, under both comparisons."""
    rng = np.random.default_rng(1)
    real = np.abs(rng.standard_normal((150, 96))) * 0.5
    radii = knn_radii(real, k).numpy()
    fake = np.abs(rng.standard_normal((140, 96))) * 0.5 + 3.0  # far from every real ball
    centers = rng.choice(150, 40, replace=False)
    direction = rng.standard_normal((40, 96))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    scale = np.where(np.arange(40) % 2 == 0, 1 - 1e-9, 1 + 1e-9)[:, None]
    fake[:40] = real[centers] + direction * radii[centers, None] * scale
    ours = _same_as_float64(real, fake, k)
    dist = np.linalg.norm(fake[:40] - real[centers], axis=1)
    assert np.all((dist < radii[centers]) == (scale[:, 0] < 1))  # the construction holds in float64
    inside = (_blas64(real, fake, k)[2] <= radii[None, :]).any(1)
    assert list(inside[:40]) == [i % 2 == 0 for i in range(40)] and not inside[40:].any()
    assert ours["pr"][0] == pytest.approx(20 / 140, abs=1e-15)  # exactly the 20 inner ones
    _approx(ours, _metrics(*_blas64(real, fake, k), k))
    _approx(ours, _metrics(*(np.sqrt(v) for v in _direct(real, fake, k)), k))


def test_large_norms_with_small_differences():
    """Norm ~1e4 with differences ~1: float32's bound is far wider than the distances, so the blocks
    are screened in float64; integer features keep every float64 path exact for the comparison."""
    rng = np.random.default_rng(2)
    real = 10_000 + rng.integers(0, 4, (160, 32))
    fake = 10_000 + rng.integers(0, 4, (150, 32))
    ours = _same_as_float64(real, fake, 3)
    rr2, fr2, d2 = _direct(real, fake, 3)
    np.testing.assert_array_equal(ours["radii"].numpy(), np.sqrt(rr2))
    _approx(ours, _metrics(rr2, fr2, d2, 3, squared=True))
    floats = real + rng.random(real.shape)  # and non-integer values: float64 screening, same bits
    _same_as_float64(floats, fake + rng.random(fake.shape), 3)


def test_squared_norms_beyond_float32_use_float64():
    x = np.abs(np.random.default_rng(3).standard_normal((90, 8))) * 1e21  # |x|^2 ~ 1e42 > 2^80
    feats = Features(torch.from_numpy(x), 64)
    assert not Screen(feats, feats, "float32").float32
    _same_as_float64(x, x[::-1] * 1.01, 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features(dtype):
    g = torch.Generator().manual_seed(4)
    real = (torch.rand(200, 80, generator=g) ** 2).to(dtype)
    fake = (torch.rand(180, 80, generator=g) ** 2 * 1.1).to(dtype)
    ours = _same_as_float64(real, fake, 3)
    as64 = _ours(real.double(), fake.double(), 3)  # the same values in float64: the same everything
    assert torch.equal(ours["radii"], as64["radii"]) and ours["prdc"] == as64["prdc"]
    _approx(ours, _metrics(*_blas64(real.double().numpy(), fake.double().numpy(), 3), 3))


@pytest.mark.parametrize("k", [1, 5])
def test_fewer_samples_than_a_block_and_any_block_size(k):
    rng = np.random.default_rng(5)
    real = np.abs(rng.standard_normal((40, 300))).astype(np.float32)
    fake = (np.abs(rng.standard_normal((35, 300))) * 1.1).astype(np.float32)
    ours = _same_as_float64(real, fake, k, block_size=2048)
    for block_size in (7, 16, 33):  # the exact values do not depend on the blocks: same bits
        again = _ours(real, fake, k, block_size=block_size)
        assert torch.equal(again["radii"], ours["radii"]) and again["prdc"] == ours["prdc"]
    _approx(ours, _metrics(*_blas64(real, fake, k), k))


def test_identical_samples_everywhere():
    """Heavy ties: every pair at distance 0 (each row's candidates overflow and resolve to 0)."""
    x = np.ones((300, 16)) * 0.37
    assert torch.equal(knn_radii(x, 5, block_size=64), torch.zeros(300, dtype=torch.float64))
    assert precision_recall(x, x, 5, block_size=64) == (1.0, 1.0)  # 0 <= 0
    assert density_coverage(x, x, 5, block_size=64) == (0.0, 0.0)  # 0 < 0 is false


def test_many_ties_overflow_candidates():
    """Binary features: hundreds of exactly equal distances per row, beyond the candidate capacity."""
    rng = np.random.default_rng(6)
    real, fake = rng.integers(0, 2, (400, 20)), rng.integers(0, 2, (300, 20))
    ours = _same_as_float64(real, fake, 3, block_size=128)
    rr2, fr2, d2 = _direct(real, fake, 3)
    np.testing.assert_array_equal(ours["radii"].numpy(), np.sqrt(rr2))
    _approx(ours, _metrics(rr2, fr2, d2, 3, squared=True))


@pytest.mark.parametrize("unit, dtype", [(U32, np.float32), (U64, np.float64)])
def test_the_screening_bound_holds(unit, dtype):
    """|screened h - exact D / 2| <= kappa (|a|^2 + |b|^2) / 2 + eta on every entry, including heavy
    cancellation (near-duplicates far from the origin); the worst case stays well inside."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal(512) * 30
    a = np.concatenate([base + rng.standard_normal((60, 512)) * 1e-3, rng.standard_normal((60, 512))])
    b = np.concatenate([base + rng.standard_normal((50, 512)) * 1e-3, np.abs(rng.standard_normal((50, 512)))])
    fa, fb = Features(torch.from_numpy(a), 64), Features(torch.from_numpy(b), 64)
    screen = Screen(fa, fb, "float32" if dtype == np.float32 else "float64")
    h = -screen.block(fa, slice(0, 120), fb, slice(0, 100), same=False).astype(np.float64)
    p, q = np.meshgrid(np.arange(120), np.arange(100), indexing="ij")
    exact = exact_sq(fa, p.ravel(), fb, q.ravel()).reshape(120, 100)
    bound = kappa(512, unit) * (fa.sq[:, None] + fb.sq[None, :]) / 2 + screen.eta
    ratio = np.abs(h - exact / 2) / bound
    assert ratio.max() <= 1.0
    assert ratio.max() > 1e-4  # the bound is not vacuous: errors of its order occur
