"""The metric table: every consumer derives keys, slots, NaN values and checks from it."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_fid import METRICS, MetricOptions
from lightning_fid.registry import (
    SLOTS,
    check_config,
    check_metric_names,
    compute,
    metric_keys,
    nan_values,
    prepare_reference,
    slot_needs,
)
from lightning_fid.stats import FeatureMoments, Statistics


def test_every_entry_is_consistent():
    for name, spec in METRICS.items():
        assert spec.name == name and spec.slot in SLOTS
        assert spec.keys[:1] == (name,) or (spec.per_class and spec.keys == ())  # per-class keys are dynamic
        assert spec.moments or spec.features or spec.per_class
        assert set(spec.options) <= set(MetricOptions.__dataclass_fields__)


def test_keys_nan_values_and_slot_needs():
    assert metric_keys(("fid", "kid", "cmmd")) == ["fid", "kid", "kid_std", "cmmd"]
    nans = nan_values(("kid", "fid"))
    assert list(nans) == ["kid", "kid_std", "fid"] and all(math.isnan(v) for v in nans.values())
    assert slot_needs(("kid", "fid", "cmmd")) == {"features": (True, True), "cmmd": (False, True)}


@pytest.mark.parametrize("names, match", [(("fid", "is2"), "unknown metric"), ((), "unknown metric"),
                                          (("fid", "fid"), "twice")])  # fmt: skip
def test_names_are_checked(names, match):
    with pytest.raises(ValueError, match=match):
        check_metric_names(names)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"kid_subsets": 0}, "kid_subsets"), ({"kid_subset_size": 1}, "kid_subset_size"),
     ({"cmmd_sigma": 0.0}, "cmmd_sigma"), ({"cmmd_scale": float("nan")}, "cmmd_scale"),
     ({"kid_subsets": 2.5}, "kid_subsets")],
)  # fmt: skip
def test_options_are_validated_when_constructed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MetricOptions(**kwargs)


def test_metric_checks_come_from_their_entries():
    with pytest.raises(ValueError, match="kid_subset_size=50 is larger than num_samples=20"):
        check_config(("fid", "kid"), MetricOptions(kid_subset_size=50), 20)
    check_config(("fid",), MetricOptions(kid_subset_size=50), 20)  # FID does not read it
    real = Statistics(features=torch.zeros(10, 4), n=10)
    with pytest.raises(ValueError, match="larger than the 10 real samples"):
        prepare_reference(("kid",), {"features": real}, MetricOptions(kid_subset_size=20))


def test_compute_matches_the_pure_functions(rng):
    from lightning_fid.metrics import frechet_distance, kid

    x, y = torch.from_numpy(rng.random((60, 6))), torch.from_numpy(rng.random((50, 6)) + 0.1)
    real = FeatureMoments(6).update(x).statistics()
    real.features = x.float()
    fake = FeatureMoments(6).update(y).statistics()
    fake.features = y.float()
    options = MetricOptions(kid_subsets=5, kid_subset_size=20, seed=3)
    prepare_reference(("fid", "kid"), {"features": real}, options)
    assert "fid_factor" in real.prepared
    values = compute(("fid", "kid"), {"features": real}, {"features": fake}, options)
    assert values["fid"] == pytest.approx(
        frechet_distance(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T)), rel=1e-10
    )
    assert (values["kid"], values["kid_std"]) == pytest.approx(kid(x.float(), y.float(), 5, 20, 3), rel=1e-12)
