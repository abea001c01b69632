"""torchmetrics-style objects give the same values as the functions, and reset as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_fid.metrics import cmmd, frechet_distance, kid
from lightning_fid.standalone import CMMD, FID, KID


def _sets(seed=0, d=8):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((120, d))), torch.from_numpy(rng.standard_normal((100, d)) + 0.3)


def test_fid_object_matches_function():
    real, fake = _sets()
    metric = FID(8)
    for batch in real.split(17):
        metric.update(batch, real=True)
    metric.update(fake, real=False)
    expected = frechet_distance(real.mean(0), torch.cov(real.T), fake.mean(0), torch.cov(fake.T))
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-10)


def test_fid_keeps_reference_when_asked():
    real, fake = _sets()
    metric = FID(8, reset_real_features=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    first = float(metric.compute())
    metric.reset()
    assert float(metric.real_n) == 120 and float(metric.fake_n) == 0
    metric.update(fake, real=False)
    assert float(metric.compute()) == pytest.approx(first, rel=1e-12)
    plain = FID(8)
    plain.update(real, real=True)
    plain.reset()
    assert float(plain.real_n) == 0


def test_kid_and_cmmd_objects_match_functions():
    real, fake = _sets(1)
    k, c = KID(num_subsets=6, subset_size=50, seed=4), CMMD()
    for metric in (k, c):
        for batch in real.split(25):
            metric.update(batch, real=True)
        metric.update(fake, real=False)
    mean, std = k.compute()
    assert (float(mean), float(std)) == kid(real, fake, 6, 50, seed=4)
    assert float(c.compute()) == pytest.approx(cmmd(real, fake), rel=1e-12)
    k.reset()
    with pytest.raises(ValueError, match="no real samples"), pytest.warns(UserWarning, match="before the ``update``"):
        k.compute()


def test_objects_run_a_feature_extractor_without_grad():
    real, fake = _sets(2, d=6)
    extractor = nn.Linear(6, 4).double()
    metric = FID(4, feature_extractor=extractor)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.no_grad():
        fr, ff = extractor(real), extractor(fake)
    expected = frechet_distance(fr.mean(0), torch.cov(fr.T), ff.mean(0), torch.cov(ff.T))
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-10)
    assert not any(p.requires_grad for p in extractor.parameters())


def test_ball_metric_and_inception_score_objects_equal_the_functions(rng):
    from lightning_fid.metrics import density_coverage, inception_score, precision_recall
    from lightning_fid.standalone import DensityCoverage, InceptionScore, PrecisionRecall

    real = torch.from_numpy(rng.random((80, 6)))
    fake = torch.from_numpy(rng.random((70, 6)) + 0.05)
    pr, dc = PrecisionRecall(), DensityCoverage()
    for metric in (pr, dc):
        for start in range(0, 80, 30):
            metric.update(real[start : start + 30], real=True)
        for start in range(0, 70, 25):
            metric.update(fake[start : start + 25], real=False)
    assert tuple(float(v) for v in pr.compute()) == precision_recall(real, fake, 3)
    assert tuple(float(v) for v in dc.compute()) == pytest.approx(density_coverage(real, fake, 5), rel=1e-12)
    logits = torch.from_numpy(rng.standard_normal((60, 12)))
    score = InceptionScore(splits=3)
    score.update(logits[:35])
    score.update(logits[35:])
    assert tuple(float(v) for v in score.compute()) == pytest.approx(inception_score(logits, 3), rel=1e-12)
    with pytest.raises(ValueError, match="generated samples only"):
        score.update(logits, real=True)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        PrecisionRecall(k=0)
