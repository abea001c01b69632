"""FeatureMoments: exact merging, .npz round trips with pytorch-fid's loader, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import compute_statistics_of_path

from lightning_fid.engine._accumulators import FeatureMoments
from lightning_fid.engine._stats import Statistics, load_statistics, validate_statistics


def _features(rng, n=500, d=16):
    return rng.standard_normal((n, d)) * 0.5 + rng.uniform(0, 1, size=d)


def test_mean_and_cov_match_numpy(rng):
    x = _features(rng)
    m = FeatureMoments(16).update(x[:123]).update(x[123:])
    assert m.count == 500
    np.testing.assert_allclose(m.mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.cov.numpy(), np.cov(x, rowvar=False), rtol=1e-10, atol=1e-13)


def test_merge_equals_concatenation(rng):
    x = _features(rng)
    parts = [FeatureMoments(16).update(x[s]) for s in (slice(0, 7), slice(7, 300), slice(300, 500))]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    whole = FeatureMoments(16).update(x)
    assert merged.count == whole.count
    torch.testing.assert_close(merged.sum, whole.sum, rtol=1e-12, atol=0)
    torch.testing.assert_close(merged.outer, whole.outer, rtol=1e-12, atol=0)


def test_float32_input_accumulates_in_float64(rng):
    x = _features(rng).astype(np.float32)
    m = FeatureMoments(16).update(torch.from_numpy(x))
    assert m.outer.dtype == torch.float64
    np.testing.assert_allclose(m.cov.numpy(), np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-13)


def test_all_reduce_without_distributed_is_a_no_op(rng):
    x = _features(rng)
    m = FeatureMoments(16).update(x)
    before = m.outer.clone()
    m.all_reduce()
    assert torch.equal(m.outer, before)


def test_save_is_read_by_pytorch_fid(rng, tmp_path):
    x = _features(rng)
    m = FeatureMoments(16).update(x)
    path = tmp_path / "ref.npz"
    m.save(path, metadata={"extractor": "test"})
    mu, sigma = compute_statistics_of_path(str(path), None, 50, 16, "cpu")
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-13)
    again = FeatureMoments.load(path)
    assert again.count == 500
    torch.testing.assert_close(again.outer, m.outer, rtol=1e-12, atol=1e-12)
    stats = load_statistics(path)
    assert stats.n == 500 and stats.metadata == {"extractor": "test"}


def test_foreign_npz_without_n_loads_as_statistics(rng, tmp_path):
    path = tmp_path / "pytorch_fid.npz"
    np.savez_compressed(path, mu=np.zeros(4), sigma=np.eye(4))  # what pytorch-fid --save-stats writes
    stats = load_statistics(path)
    assert stats.n is None and stats.mu.shape == (4,)
    with pytest.raises(ValueError, match="no sample count"):
        FeatureMoments.from_statistics(stats)


def test_bad_files(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_statistics(missing)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="cannot read statistics file .*corrupt.npz"):
        load_statistics(corrupt)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, features=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="needs 'mu' and 'sigma'"):
        load_statistics(wrong)
    shapes = tmp_path / "shapes.npz"
    Statistics(mu=np.zeros(3), sigma=np.eye(4)).save(shapes)
    with pytest.raises(ValueError, match="expected \\(d,\\) and \\(d, d\\)"):
        load_statistics(shapes)


def test_bad_updates(rng):
    m = FeatureMoments(4)
    with pytest.raises(ValueError, match=r"shape \(batch, 4\)"):
        m.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="non-finite"):
        m.update(np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="no features accumulated"):
        _ = m.mean
    m.update(np.ones((1, 4)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        _ = m.cov
    with pytest.raises(ValueError, match="cannot merge"):
        m.merge(FeatureMoments(5))


@pytest.mark.parametrize(
    "eigenvalues, ok",
    [
        ([4.0, 1.0, 0.0, 0.0], True),  # rank-deficient (fewer samples than dimensions): a covariance
        ([4.0, 1.0, -1e-6, 0.0], True),  # rounding, within PSD_TOLERANCE of the largest eigenvalue
        ([4.0, 1.0, -1e-3, 0.0], False),  # beyond it
        ([-4.0, -1.0, 0.0, 0.0], False),  # negative definite: the Rayleigh shift is negative, the exact check refuses
    ],
)
def test_positive_semi_definiteness_is_judged_on_eigenvalues(eigenvalues, ok):
    rotation = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 4)))[0]
    sigma = rotation @ np.diag(eigenvalues) @ rotation.T
    stats = Statistics(mu=np.zeros(4), sigma=(sigma + sigma.T) / 2)
    if ok:
        validate_statistics(stats, "ref.npz")
    else:
        with pytest.raises(ValueError, match="ref.npz: sigma is not positive semi-definite"):
            validate_statistics(stats, "ref.npz")
