"""Metric objects and their names: every consumer derives keys, slots, NaN values and checks from them."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_fid.engine import Scorer
from lightning_fid.engine._accumulators import FeatureMoments
from lightning_fid.engine._stats import Statistics
from lightning_fid.metrics import (
    CMMD,
    KID,
    METRICS,
    DensityCoverage,
    FIDInfinity,
    InceptionScore,
    Metric,
    PrecisionRecall,
    RunInfo,
    resolve_metrics,
)


def test_every_name_makes_a_consistent_metric():
    for name, make in METRICS.items():
        metric = make()
        assert isinstance(metric, Metric)
        keys = metric.keys(RunInfo(num_samples=10, classes=2))
        assert keys and len(set(keys)) == len(keys)
        assert name in keys or name == "fid_per_class", (name, keys)
        assert metric.needs.moments or metric.needs.features or metric.needs.per_class
        assert repr(metric).startswith(type(metric).__name__ + "(")


def test_names_resolve_to_default_instances_and_pairs_merge():
    metrics = resolve_metrics(("fid", "kid", "cmmd", "recall", "precision", "coverage"))
    assert [type(m).__name__ for m in metrics] == ["FID", "KID", "CMMD", "PrecisionRecall", "DensityCoverage"]
    run = RunInfo(num_samples=10)
    assert [k for m in metrics for k in m.keys(run)] == [
        "fid",
        "kid",
        "kid_std",
        "cmmd",
        "precision",
        "recall",
        "coverage",
    ]
    nans = metrics[1].nan_values(run)
    assert list(nans) == ["kid", "kid_std"] and all(math.isnan(v) for v in nans.values())
    assert resolve_metrics("fid")[0].identity() == {"metric": "lightning_fid.metrics.fid.FID", "key": "fid"}


@pytest.mark.parametrize(
    "names, match",
    [
        (("fid", "is2"), "unknown metric"),
        ((), "no metrics given"),
        (("fid", "fid"), "twice"),
        (("fid", 3), "names or lightning_fid.metrics.Metric"),
        (("kid", KID(subsets=5)), "both log 'kid'"),
    ],
)
def test_names_are_checked(names, match):
    with pytest.raises(ValueError, match=match):
        resolve_metrics(names)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: KID(subsets=0), "KID subsets"),
        (lambda: KID(subset_size=1), "KID subset_size"),
        (lambda: CMMD(sigma=0.0), "CMMD sigma"),
        (lambda: CMMD(scale=float("nan")), "CMMD scale"),
        (lambda: KID(subsets=2.5), "KID subsets"),
        (lambda: KID(subsets=True), "KID subsets"),
        (lambda: InceptionScore(splits=0), "splits"),
        (lambda: PrecisionRecall(k=0), "PrecisionRecall k"),
        (lambda: PrecisionRecall(report="density"), "report="),
        (lambda: FIDInfinity(points=1), "points"),
        (lambda: KID(key=""), "key must be"),
        (lambda: KID(extractor="inception"), "torch.nn.Module"),
    ],
)
def test_options_are_validated_when_constructed(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_options_are_the_identity_and_show_in_repr():
    assert KID(subset_size=500).options() == {"subsets": 100, "subset_size": 500, "seed": None}
    assert KID(subset_size=500).identity() != KID().identity()
    assert repr(PrecisionRecall(k=5, key="pr")) == "PrecisionRecall(k=5, report=('precision', 'recall'), key='pr')"
    assert PrecisionRecall(key="pr").keys() == ("pr_precision", "pr_recall")
    assert DensityCoverage(report="coverage").keys() == ("coverage",)


@pytest.mark.parametrize(
    "metric, match",
    [
        (KID(subset_size=50), r"KID\(subset_size=50\) is larger than num_samples=20"),
        (InceptionScore(splits=30), r"splits=30.*num_samples=20"),
        (PrecisionRecall(k=20), r"k=20.*num_samples=20"),
        (FIDInfinity(), "two sizes"),
    ],
)
def test_run_checks_come_from_the_metrics(metric, match):
    with pytest.raises(ValueError, match=match):
        Scorer(
            [metric], ["features"], RunInfo(num_samples=20, min_samples=2 if isinstance(metric, FIDInfinity) else 20)
        )
    DensityCoverage(k=30).check_run(RunInfo(num_samples=20))  # real balls only: any generated count


def test_reference_checks_come_from_the_metrics():
    real = Statistics(features=torch.zeros(10, 4), n=10)
    scorer = Scorer([KID(subset_size=20)], ["features"], RunInfo(num_samples=30))
    with pytest.raises(ValueError, match="larger than the 10 real samples"):
        scorer.prepare({"features": real})
    scorer = Scorer([PrecisionRecall(k=10)], ["features"], RunInfo(num_samples=30))
    with pytest.raises(ValueError, match="more than k real samples"):
        scorer.prepare({"features": real})


def test_scorer_matches_the_pure_functions(rng):
    from lightning_fid.metrics import frechet_distance, kid

    x, y = torch.from_numpy(rng.random((60, 6))), torch.from_numpy(rng.random((50, 6)) + 0.1)
    real = FeatureMoments(6).update(x).statistics()
    real.features = x.float()
    fake = FeatureMoments(6).update(y).statistics()
    fake.features = y.float()
    scorer = Scorer(resolve_metrics(("fid", KID(subsets=5, subset_size=20, seed=3))), ["f", "f"], RunInfo(50))
    scorer.prepare({"f": real})
    values = scorer.score({"f": real}, {"f": fake})
    assert values["fid"] == pytest.approx(
        frechet_distance(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T)), rel=1e-10
    )
    mean, std = kid(x.float(), y.float(), 5, 20, 3)
    assert (values["kid"], values["kid_std"]) == pytest.approx((mean, std), rel=1e-9)


def test_a_failing_metric_is_nan_with_a_warning_when_not_strict(rng):
    class Broken(Metric):
        name = "broken"

        def compute(self, real, fake, context):
            raise RuntimeError("boom")

    x = torch.from_numpy(rng.random((20, 3)))
    stats = FeatureMoments(3).update(x).statistics()
    scorer = Scorer(resolve_metrics(("fid", Broken())), ["f", "f"], RunInfo(20))
    scorer.prepare({"f": stats})
    with pytest.raises(RuntimeError, match="boom"):
        scorer.score({"f": stats}, {"f": stats})
    with pytest.warns(UserWarning, match=r"Broken\(\) could not be computed .*RuntimeError: boom"):
        values = scorer.score({"f": stats}, {"f": stats}, strict=False)
    assert values["fid"] == pytest.approx(0.0, abs=1e-9) and math.isnan(values["broken"])
