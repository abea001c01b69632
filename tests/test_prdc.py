"""Precision / recall and density / coverage against the prdc package and torch-fidelity's PRC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.dist import run_distributed

from lightning_fid.metrics.prdc import (
    density_coverage,
    knn_radii,
    precision_recall,
    precision_recall_density_coverage,
)

# prdc (with scikit-learn) and torch-fidelity are imported inside the tests that use them: spawned
# workers import this module, and these imports would add seconds to every worker's start.


def _sets(seed=0, n=350, m=300, d=24):
    rng = np.random.default_rng(seed)
    real = np.abs(rng.standard_normal((n, d))) * 0.5
    fake = np.abs(rng.standard_normal((m, d))) * 0.6 + 0.05
    fake[:5] += 4.0  # a few outliers among generated samples
    return real, fake


def _full_matrix_reference(real, fake, k):
    """Direct float64 formulas on full distance matrices (the definitions, not a library)."""
    dist = lambda a, b: np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # noqa: E731
    rr = np.sort(dist(real, real), axis=1)[:, k]
    fr = np.sort(dist(fake, fake), axis=1)[:, k]
    rf = dist(real, fake)
    return {
        "radii": rr,
        "precision": (rf <= rr[:, None]).any(0).mean(),
        "recall": (rf <= fr[None, :]).any(1).mean(),
        "density": (rf < rr[:, None]).sum() / (k * fake.shape[0]),
        "coverage": (rf.min(1) < rr).mean(),
    }


@pytest.mark.parametrize("k", [3, 5])
def test_matches_prdc_package(k):
    from prdc import compute_prdc

    real, fake = _sets()
    ref = compute_prdc(real, fake, nearest_k=k)
    precision, recall = precision_recall(real, fake, k, block_size=128)
    density, coverage = density_coverage(real, fake, k, block_size=128)
    assert (precision, recall, coverage) == (ref["precision"], ref["recall"], ref["coverage"])  # exact fractions
    assert density == pytest.approx(ref["density"], rel=1e-12)  # (1/k) * mean vs sum / (k M): one rounding
    assert 0.2 < precision < 1 and 0.2 < recall < 1 and 0.2 < coverage < 1
    together = precision_recall_density_coverage(real, fake, k, block_size=100)  # prdc's own semantics, one pass
    assert together == pytest.approx({key: float(v) for key, v in ref.items()}, rel=1e-12)


def test_matches_torch_fidelity_prc():
    from torch_fidelity.metric_prc import prc_features_to_metric

    real, fake = _sets(seed=1)
    ref = prc_features_to_metric(  # torch-fidelity's convention: features_1 generated, features_2 real
        torch.from_numpy(fake),
        torch.from_numpy(real),
        prc_neighborhood=3,
        prc_batch_size=100,
        save_cpu_ram=True,
        verbose=False,
    )
    precision, recall = precision_recall(real, fake, 3, block_size=64)
    # torch-fidelity averages the 0/1 hits in float32: its fractions are within 1e-7 of the exact ones
    assert precision == pytest.approx(ref["precision"], abs=1e-7)
    assert recall == pytest.approx(ref["recall"], abs=1e-7)
    assert round(precision * fake.shape[0]) == round(ref["precision"] * fake.shape[0])


def test_radii_match_prdc_and_handle_duplicates():
    from prdc.prdc import compute_nearest_neighbour_distances

    real, _ = _sets(seed=2)
    real[10] = real[11] = real[12]  # duplicates are neighbours at distance ~0, as in prdc
    ref = compute_nearest_neighbour_distances(real, 2)
    ours = knn_radii(real, 2, block_size=50)
    assert ours.dtype == torch.float64 and ours.shape == (real.shape[0],)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12, atol=1e-7)
    # |a|^2 + |b|^2 - 2 a.b leaves ~eps |a|^2 for a == b, so sqrt gives ~1e-8, in prdc (scikit-learn) too
    assert ours[10] < 1e-7 and ref[10] < 1e-7


@pytest.mark.parametrize("block_size", [7, 64, 4096])
def test_blockwise_equals_full_matrix(block_size):
    real, fake = _sets(seed=3, n=260, m=190, d=12)
    ref = _full_matrix_reference(real, fake, 4)
    np.testing.assert_allclose(knn_radii(real, 4, block_size=block_size).numpy(), ref["radii"], rtol=1e-12)
    assert precision_recall(real, fake, 4, block_size=block_size) == (ref["precision"], ref["recall"])
    density, coverage = density_coverage(real, fake, 4, block_size=block_size)
    assert density == pytest.approx(ref["density"], rel=1e-14) and coverage == ref["coverage"]


def test_results_do_not_depend_on_block_size_or_precision():
    real, fake = _sets(seed=4)
    base = precision_recall(real, fake), density_coverage(real, fake)
    assert (precision_recall(real, fake, block_size=33), density_coverage(real, fake, block_size=33)) == base
    # float32 features are upcast: the same values, whether given as float32 or float64
    r32, f32 = real.astype(np.float32), fake.astype(np.float32)
    assert precision_recall(r32, f32) == precision_recall(r32.astype(np.float64), f32.astype(np.float64))
    assert density_coverage(torch.from_numpy(r32), f32) == density_coverage(r32.astype(np.float64), f32)


def test_torch_code_path_used_on_accelerators_agrees(monkeypatch):
    """GPUs run the block arithmetic through torch instead of numpy: exercise that path on the CPU,
    float32 screening (with candidates and undecided entries) and float64 screening alike."""
    from lightning_fid.metrics import _blocks

    real, fake = _sets(seed=8)
    kw = dict(block_size=120)
    radii = knn_radii(real, 3, **kw)
    expected = precision_recall_density_coverage(real, fake, 3, **kw)
    monkeypatch.setattr(_blocks, "library", lambda device: torch)
    # the exact values are one fixed sequence of IEEE float64 operations in either library: same bits
    assert torch.equal(knn_radii(real, 3, **kw), radii)
    assert precision_recall_density_coverage(real, fake, 3, **kw) == expected
    assert precision_recall_density_coverage(real, fake, 3, products="float64", **kw) == expected


def test_cached_real_radii_give_identical_values():
    real, fake = _sets(seed=5)
    r3, r5 = knn_radii(real, 3), knn_radii(real, 5)
    assert precision_recall(real, fake, real_radii=r3) == precision_recall(real, fake)
    assert density_coverage(real, fake, real_radii=r5.numpy()) == density_coverage(real, fake)


def test_identical_sets_and_far_sets():
    real, _ = _sets(seed=6)
    assert precision_recall(real, real) == (1.0, 1.0)
    density, coverage = density_coverage(real, real)
    assert coverage == 1.0 and density >= 1.0  # each sample lies in its own ball and k others on average
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    assert density_coverage(real, real + 100.0) == (0.0, 0.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda r, f: precision_recall(r[:, :3], f), "feature dimension mismatch"),
        (lambda r, f: precision_recall(r[:3], f, k=3), "real_features needs at least 4 samples"),
        (lambda r, f: precision_recall(r, f[:3], k=3), "fake_features needs at least k \\+ 1 = 4"),
        (lambda r, f: density_coverage(r, f, k=0), "k must be an integer >= 1"),
        (lambda r, f: density_coverage(r, f, k=2.5), "k must be an integer"),
        (lambda r, f: density_coverage(r, f, block_size=0), "block_size must be an integer >= 1"),
        (lambda r, f: density_coverage(r, f, real_radii=np.ones(5)), "real_radii must have shape \\(350,\\)"),
        (lambda r, f: density_coverage(r, f, real_radii=-np.ones(350)), "finite, non-negative"),
        (lambda r, f: precision_recall(r[0], f), "real_features must be a 2-D"),
        (lambda r, f: knn_radii(np.full((5, 2), np.inf), 2), "features contains 10 non-finite"),
    ],
)
def test_bad_inputs(call, match):
    real, fake = _sets()
    with pytest.raises(ValueError, match=match):
        call(real, fake)


def _worker(rank, world):
    real, fake = _sets(seed=7, n=157, m=131, d=10)
    return {
        "radii": knn_radii(real, 3, block_size=16, distributed=True),
        "pr": precision_recall(real, fake, 3, block_size=16, distributed=True),
        "dc": density_coverage(real, fake, 5, block_size=16, distributed=True),
        "all": precision_recall_density_coverage(real, fake, 4, block_size=16, distributed=True),
    }


@pytest.mark.multiprocess
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_runs_are_identical_to_one_process(tmp_path, world):
    real, fake = _sets(seed=7, n=157, m=131, d=10)
    radii = knn_radii(real, 3, block_size=16)
    pr = precision_recall(real, fake, 3, block_size=16)
    dc = density_coverage(real, fake, 5, block_size=16)
    together = precision_recall_density_coverage(real, fake, 4, block_size=16)
    for result in run_distributed(_worker, world, tmp_path):
        assert torch.equal(result["radii"], radii)  # bit-identical, not merely close
        assert result["pr"] == pr and result["dc"] == dc and result["all"] == together
