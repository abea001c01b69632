"""Real multi-process runs (gloo on CPU): results must not depend on the number of processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
from helpers.dist import run_distributed, uneven_split

from lightning_fid.engine._accumulators import FeatureBank, FeatureMoments
from lightning_fid.metrics import cmmd, kid, kid_full
from lightning_fid.standalone import CMMD, FID, KID

pytestmark = pytest.mark.multiprocess

N, D = 157, 12  # odd sizes: uneven shares on 2 and 3 ranks


def _data(seed=0):
    rng = np.random.default_rng(seed)
    real = torch.from_numpy(np.abs(rng.standard_normal((N, D))) + 0.1)
    fake = torch.from_numpy(np.abs(rng.standard_normal((N - 20, D))) * 1.1 + 0.1)
    return real, fake


def _moments_worker(rank, world):
    real, _ = _data()
    m = FeatureMoments(D).update(real[uneven_split(N, world)[rank]])
    calls = []
    original = dist.all_reduce

    def counting(*a, **k):
        calls.append(1)
        return original(*a, **k)

    dist.all_reduce = counting
    try:
        m.all_reduce()
    finally:
        dist.all_reduce = original
    return {"n": m.count, "sum": m.sum, "outer": m.outer, "calls": len(calls)}


@pytest.mark.parametrize("world", [2, 3])
def test_moments_all_reduce_equals_concatenation(tmp_path, world):
    real, _ = _data()
    whole = FeatureMoments(D).update(real)
    for result in run_distributed(_moments_worker, world, tmp_path):
        assert result["calls"] == 1  # exactly one collective per all_reduce
        assert result["n"] == N
        torch.testing.assert_close(result["sum"], whole.sum, rtol=1e-12, atol=0)
        torch.testing.assert_close(result["outer"], whole.outer, rtol=1e-12, atol=0)


def _bank_worker(rank, world):
    real, fake = _data()
    banks = {}
    for name, feats in (("real", real), ("fake", fake)):
        bank = FeatureBank(D)
        mine = torch.arange(rank, feats.shape[0], world)  # round-robin, uneven counts
        bank.add(feats[mine], mine)
        banks[name] = bank.gather()
    return {
        "real": banks["real"],
        "fake": banks["fake"],
        "kid": kid(banks["real"], banks["fake"], 9, 40, seed=2, distributed=True),
        "kid_full": kid_full(banks["real"], banks["fake"], block_size=32, distributed=True),
        "cmmd": cmmd(banks["real"], banks["fake"], block_size=32, distributed=True),
    }


@pytest.mark.parametrize("world", [2, 3])
def test_bank_and_shared_kernel_work_equal_single_process(tmp_path, world):
    real, fake = _data()
    single_kid = kid(real, fake, 9, 40, seed=2)
    single_full = kid_full(real, fake, block_size=32)
    single_cmmd = cmmd(real, fake, block_size=32)
    for r in run_distributed(_bank_worker, world, tmp_path):
        assert torch.equal(r["real"], real) and torch.equal(r["fake"], fake)  # global order restored
        assert r["kid"] == single_kid  # subsets computed once each: bit-identical
        assert r["kid_full"] == pytest.approx(single_full, rel=1e-12)
        assert r["cmmd"] == pytest.approx(single_cmmd, rel=1e-12)


def _metric_objects_worker(rank, world):
    real, fake = _data()
    fid, kid_m, cmmd_m = FID(D), KID(num_subsets=5, subset_size=30), CMMD()
    for feats, is_real in ((real, True), (fake, False)):
        mine = feats[rank::world]  # what DistributedSampler(shuffle=False) deals
        for batch in mine.split(10):
            for metric in (fid, kid_m, cmmd_m):
                metric.update(batch, real=is_real)
    calls = []
    original = dist.all_reduce

    def counting(*a, **k):
        calls.append(1)
        return original(*a, **k)

    dist.all_reduce = counting
    try:
        fid_value = float(fid.compute())
    finally:
        dist.all_reduce = original
    kid_mean, kid_std = kid_m.compute()
    return {
        "fid": fid_value,
        "fid_calls": len(calls),
        "kid": (float(kid_mean), float(kid_std)),
        "cmmd": float(cmmd_m.compute()),
    }


def _single_metric_values():
    real, fake = _data()
    fid, kid_m, cmmd_m = FID(D), KID(num_subsets=5, subset_size=30), CMMD()
    for metric in (fid, kid_m, cmmd_m):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    return float(fid.compute()), tuple(float(v) for v in kid_m.compute()), float(cmmd_m.compute())


@pytest.mark.parametrize("world", [2, 3])
def test_metric_objects_sync_with_one_all_reduce(tmp_path, world):
    fid_single, kid_single, cmmd_single = _single_metric_values()
    for r in run_distributed(_metric_objects_worker, world, tmp_path):
        assert r["fid"] == pytest.approx(fid_single, rel=1e-9)
        assert r["fid_calls"] == 1  # six moment states, one packed all-reduce
        assert r["kid"] == pytest.approx(kid_single, rel=1e-9)
        assert r["cmmd"] == pytest.approx(cmmd_single, rel=1e-9)
