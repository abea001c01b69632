"""Inception Score against torch-fidelity's isc_features_to_metric on identical logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.metric_isc import isc_features_to_metric

from lightning_fid.metrics.inception_score import inception_score, split_scores


def _logits(rng, n, classes=1008, scale=3.0, dtype=np.float32):
    # peaked posteriors like the Inception classifier's, class-sorted in blocks like a generator's output
    base = rng.standard_normal((n, classes)) * scale
    base[np.arange(n), (np.arange(n) * 7) % classes] += 8.0
    return base.astype(dtype)


def _reference(logits, splits):
    out = isc_features_to_metric(torch.from_numpy(logits), splits=splits, shuffle=False)
    return out["inception_score_mean"], out["inception_score_std"]


@pytest.mark.parametrize("n, splits", [(1000, 10), (997, 10), (500, 1), (301, 7), (20, 20)])
def test_matches_torch_fidelity_in_sample_order(rng, n, splits):
    logits = _logits(rng, n)
    mean, std = inception_score(logits, splits)
    ref_mean, ref_std = _reference(logits, splits)
    assert mean == pytest.approx(ref_mean, rel=1e-12)
    assert std == pytest.approx(ref_std, rel=1e-9, abs=1e-12)
    assert mean >= 1.0


def test_float64_and_tensor_inputs_agree(rng):
    logits = _logits(rng, 400, dtype=np.float64)
    assert inception_score(torch.from_numpy(logits), 4) == inception_score(logits, 4)
    assert inception_score(logits.astype(np.float32), 4) == pytest.approx(inception_score(logits, 4), rel=1e-6)


def test_order_matters_and_matches_shuffled_torch_fidelity(rng):
    """Splits follow the given order: feeding torch-fidelity's own permutation reproduces its default."""
    logits = _logits(rng, 600)
    perm = np.random.RandomState(2020).permutation(600)
    shuffled = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=2020)
    assert inception_score(logits[perm], 10)[0] == pytest.approx(shuffled["inception_score_mean"], rel=1e-12)
    assert inception_score(logits, 10) != inception_score(logits[perm], 10)


def test_known_values():
    # one-hot-like posteriors over C distinct classes give IS = C; identical posteriors give IS = 1
    eye = np.eye(8) * 60.0
    assert inception_score(eye, splits=1) == pytest.approx((8.0, 0.0), rel=1e-12)
    assert inception_score(np.tile(eye[:1], (10, 1)), splits=2) == pytest.approx((1.0, 0.0), abs=1e-12)
    assert split_scores(np.vstack([eye, eye[:1].repeat(8, 0)]), splits=2) == pytest.approx([8.0, 1.0])


def test_underflowed_probabilities_do_not_give_nan():
    logits = np.zeros((4, 3))
    logits[:, 0] = 2000.0  # classes 1, 2 have probability exactly 0 in float64: torch-fidelity returns NaN
    assert inception_score(logits, splits=2) == (1.0, 0.0)


@pytest.mark.parametrize(
    "logits, splits, match",
    [
        (np.ones(10), 1, "2-D"),
        (np.ones((10, 1)), 1, "at least 2 classes"),
        (np.ones((10, 5)), 0, "splits must be an integer between 1 and the number of samples \\(10\\)"),
        (np.ones((10, 5)), 11, "between 1 and the number of samples"),
        (np.ones((10, 5)), 2.0, "splits must be an integer"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), 1, "logits contains 1 non-finite"),
        (np.ones((4, 3), dtype=np.complex128), 1, "real numbers"),
    ],
)
def test_bad_inputs(logits, splits, match):
    with pytest.raises(ValueError, match=match):
        inception_score(logits, splits)


def _adm_inception_score(logits: np.ndarray, split_size: int) -> float:
    """guided-diffusion's evaluations/evaluator.py compute_inception_score, on softmax(logits)."""
    z = logits.astype(np.float64)
    preds = np.exp(z - z.max(1, keepdims=True))
    preds /= preds.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


@pytest.mark.parametrize("n, split_size", [(1000, 250), (1030, 250), (300, 5000)])
def test_split_size_matches_guided_diffusion(rng, n, split_size):
    from lightning_fid.engine._stats import Statistics
    from lightning_fid.metrics import InceptionScore
    from lightning_fid.metrics.base import Context, RunInfo

    logits = _logits(rng, n, classes=64, scale=1.0)
    expected = _adm_inception_score(logits, split_size)
    assert inception_score(logits, split_size=split_size)[0] == pytest.approx(expected, rel=1e-12)
    metric = InceptionScore(split_size=split_size)
    out = metric.compute(Statistics(), Statistics(features=torch.from_numpy(logits)), Context(groups=10))
    splits = -(-n // split_size)
    assert len(split_scores(logits, split_size=split_size)) == splits
    if splits >= 2:  # its splits are its jackknife groups
        assert metric.error_keys(RunInfo(num_samples=n)) == ("is",)
        assert out["is"].value == pytest.approx(expected, rel=1e-12) and out["is"].se > 0
    else:
        assert metric.error_keys(RunInfo(num_samples=n)) == () and out["is"] == pytest.approx(expected, rel=1e-12)


def test_a_last_split_of_one_sample_is_refused():
    from lightning_fid.metrics import InceptionScore
    from lightning_fid.metrics.base import RunInfo

    with pytest.raises(ValueError, match="last split of 1 sample"):
        InceptionScore(split_size=5).check_run(RunInfo(num_samples=11))
