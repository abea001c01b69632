"""Precision / recall against an independent numpy port of guided-diffusion's ManifoldEstimator.

The port follows openai/guided-diffusion ``evaluations/evaluator.py`` (commit 1b61a43, the ADM suite
used by DiT, SiT, REPA, VAR, MAR): ``DistanceBlock`` squared distances max(|u|^2 - 2 u.v + |v|^2, 0)
computed first in float16 and, only if some value is not finite, in float32; radii from k = 3 as
``np.partition(d, arange(k + 1))[:, k]`` (the row's own 0 included) over row / column batches of
10000, stored in float32; a sample is inside a ball when its squared distance is ``<=`` the squared
radius. ``dtype`` selects the arithmetic: "float16" (ADM's own: inputs rounded to float16, numpy's
float16 matmul, then float32 as in ADM), "float32" (ADM's fallback) or "float64" (the same algorithm
in float64, radii kept in float64: the reference for equality).

Tolerance: ours and the float64 port take identical decisions on identical features (precision and
recall equal exactly); the float32 and float16 ports differ from the float64 port only on near-ties,
samples whose deciding squared distance is within float32's (resp. float16's) rounding of a radius.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_fid.engine._stats import Statistics
from lightning_fid.metrics import PrecisionRecall, precision_recall
from lightning_fid.metrics.base import Context


def _pairwise(u, v, dtype):
    """DistanceBlock's _batch_pairwise_distances in ``dtype``."""
    u, v = u.astype(dtype), v.astype(dtype)
    norm_u = np.sum(np.square(u), 1).reshape(-1, 1)
    norm_v = np.sum(np.square(v), 1).reshape(1, -1)
    return np.maximum(norm_u - dtype(2) * np.matmul(u, v.T) + norm_v, dtype(0))


class AdmManifoldEstimator:
    """ManifoldEstimator(row_batch_size=10000, col_batch_size=10000, nhood_sizes=(3,)) with its
    DistanceBlock, ported from TensorFlow to numpy."""

    def __init__(self, dtype="float16", row_batch_size=10000, col_batch_size=10000, nhood_sizes=(3,)):
        self.dtype = dtype
        self.row_batch_size, self.col_batch_size = row_batch_size, col_batch_size
        self.nhood_sizes, self.num_nhoods = list(nhood_sizes), len(nhood_sizes)
        self.store = np.float64 if dtype == "float64" else np.float32  # ADM's arrays are float32

    def pairwise_distances(self, u, v):
        if self.dtype == "float16":  # tf.cond(all finite(float16 block), float16 block, float32 block)
            d16 = _pairwise(u, v, np.float16)
            if np.all(np.isfinite(d16)):
                return d16.astype(np.float32)
            return _pairwise(u, v, np.float32)
        return _pairwise(u, v, np.float32 if self.dtype == "float32" else np.float64)

    def manifold_radii(self, features):
        num_images = len(features)
        radii = np.zeros([num_images, self.num_nhoods], dtype=self.store)
        distance_batch = np.zeros([self.row_batch_size, num_images], dtype=self.store)
        seq = np.arange(max(self.nhood_sizes) + 1, dtype=np.int32)
        for begin1 in range(0, num_images, self.row_batch_size):
            end1 = min(begin1 + self.row_batch_size, num_images)
            row_batch = features[begin1:end1]
            for begin2 in range(0, num_images, self.col_batch_size):
                end2 = min(begin2 + self.col_batch_size, num_images)
                distance_batch[0 : end1 - begin1, begin2:end2] = self.pairwise_distances(
                    row_batch, features[begin2:end2]
                )
            part = np.partition(distance_batch[0 : end1 - begin1, :], seq, axis=1)
            radii[begin1:end1, :] = part[:, self.nhood_sizes]
        return radii

    def less_thans(self, batch_1, radii_1, batch_2, radii_2):
        dist = self.pairwise_distances(batch_1, batch_2).astype(self.store)[..., None]
        return np.any(dist <= radii_2, axis=1), np.any(dist <= radii_1[:, None], axis=0)

    def evaluate_pr(self, features_1, radii_1, features_2, radii_2):
        """(precision, recall) per neighbourhood: features_1 the reference batch, features_2 the samples."""
        features_1_status = np.zeros([len(features_1), radii_2.shape[1]], dtype=bool)
        features_2_status = np.zeros([len(features_2), radii_1.shape[1]], dtype=bool)
        for begin_1 in range(0, len(features_1), self.row_batch_size):
            end_1 = begin_1 + self.row_batch_size
            batch_1 = features_1[begin_1:end_1]
            for begin_2 in range(0, len(features_2), self.col_batch_size):
                end_2 = begin_2 + self.col_batch_size
                batch_1_in, batch_2_in = self.less_thans(
                    batch_1, radii_1[begin_1:end_1], features_2[begin_2:end_2], radii_2[begin_2:end_2]
                )
                features_1_status[begin_1:end_1] |= batch_1_in
                features_2_status[begin_2:end_2] |= batch_2_in
        self.status = features_1_status[:, 0], features_2_status[:, 0]  # per real, per generated sample
        return (
            np.mean(features_2_status.astype(np.float64), axis=0),
            np.mean(features_1_status.astype(np.float64), axis=0),
        )

    def compute_prec_recall(self, activations_ref, activations_sample):
        """Evaluator.compute_prec_recall."""
        radii_1 = self.manifold_radii(activations_ref)
        radii_2 = self.manifold_radii(activations_sample)
        pr = self.evaluate_pr(activations_ref, radii_1, activations_sample, radii_2)
        return float(pr[0][0]), float(pr[1][0])


def _inception_like(seed, n_real=700, n_fake=600, d=128):
    """Non-negative, sparse-ish features near a low-dimensional manifold, norms ~20 like pool3."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((16, d)) / 2
    real = np.maximum(rng.standard_normal((n_real, 16)) @ w + 0.3 * rng.standard_normal((n_real, d)), 0)
    fake = np.maximum((rng.standard_normal((n_fake, 16)) * 1.1 + 0.1) @ w + 0.3 * rng.standard_normal((n_fake, d)), 0)
    return real.astype(np.float32), fake.astype(np.float32)


@pytest.mark.parametrize("seed, batch", [(0, 10000), (1, 10000), (2, 256)])
def test_identical_to_the_float64_port(seed, batch):
    real, fake = _inception_like(seed)
    ours = precision_recall(real, fake, 3)
    port = AdmManifoldEstimator("float64", batch, batch).compute_prec_recall(real, fake)
    assert ours == port  # the same decisions: exactly the same fractions
    assert 0.2 < ours[0] < 0.95 and 0.2 < ours[1] < 0.95
    metric = PrecisionRecall(k=3).compute(
        Statistics(features=torch.from_numpy(real)), Statistics(features=torch.from_numpy(fake)), Context()
    )
    assert (metric["precision"], metric["recall"]) == port


def _gaps(real, fake, k=3):
    """Per generated sample, float64: the relative gap |D - r^2| / r^2 to the ball boundary nearest
    in relative terms (the decision that float rounding could flip)."""
    rr = np.sort(_pairwise(real, real, np.float64), axis=1)[:, k]
    d = _pairwise(fake, real, np.float64)
    return (np.abs(d - rr[None, :]) / rr[None, :]).min(1)


def test_float32_and_float16_ports_differ_only_on_near_ties():
    real, fake = _inception_like(3)
    rng = np.random.default_rng(4)
    # generated samples placed at squared distance r^2 (1 -+ 3e-7) from a real sample: a tie for float32
    rr = np.sort(_pairwise(real, real, np.float64), axis=1)[:, 3]
    centers = rng.choice(len(real), 60, replace=False)
    direction = rng.standard_normal((60, real.shape[1]))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    scale = np.sqrt(1 + np.where(np.arange(60) % 2 == 0, -3e-7, 3e-7))[:, None]
    fake = fake.astype(np.float64)
    fake[:60] = real[centers] + direction * np.sqrt(rr[centers])[:, None] * scale
    exact = AdmManifoldEstimator("float64")
    assert exact.compute_prec_recall(real, fake) == precision_recall(real, fake, 3)
    gap = _gaps(real.astype(np.float64), fake)
    for dtype, tie in (("float32", 1e-4), ("float16", 5e-2)):
        port = AdmManifoldEstimator(dtype)
        port.compute_prec_recall(real, fake)
        differ = np.nonzero(port.status[1] != exact.status[1])[0]
        assert np.all(gap[differ] < tie), (dtype, gap[differ].max())
        if dtype == "float32":  # the constructed ties are where it differs
            assert len(differ) > 0 and set(differ) <= set(range(60))
