"""Error bars are identical for any number of processes: groups are fixed by global sample index, the
group moments merge in the moments' one all-reduce, the per-group kernel and ball sums in the metrics'."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.dist import run_distributed, uneven_split
from helpers.tiny import TinyEmbed, TinyFeatures, real_images

from lightning_fid.engine import build_slots
from lightning_fid.engine._images import to_uint8
from lightning_fid.engine._pipeline import Accumulator
from lightning_fid.engine._scoring import Scorer
from lightning_fid.metrics import CMMD, FID, KID, DensityCoverage, InceptionScore, PrecisionRecall
from lightning_fid.metrics.base import RunInfo

pytestmark = pytest.mark.multiprocess

N_REAL, N_FAKE = 53, 47  # uneven shares on 2 ranks, groups of 4 and 5 samples


def _images(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return to_uint8((real_images(n, seed) + shift).clamp(-1, 1), (-1, 1))


def _score(rank: int, world: int) -> dict[str, float]:
    metrics = [
        FID(),
        KID(subsets=4, subset_size=10),
        CMMD(extractor=TinyEmbed(seed=5)),
        PrecisionRecall(k=3),
        DensityCoverage(k=5),
        InceptionScore(splits=3, extractor=TinyFeatures(seed=3)),
    ]
    slots, slot_of = build_slots(metrics, TinyFeatures())
    scorer = Scorer(metrics, slot_of, RunInfo(num_samples=N_FAKE), groups=10)
    sides = {}
    for name, n, images, groups in (
        ("real", N_REAL, _images(N_REAL, 1), {}),
        ("fake", N_FAKE, _images(N_FAKE, 2, 0.2), scorer.grouped_slots()),
    ):
        acc = Accumulator(slots, torch.device("cpu"), groups=groups)
        share = uneven_split(n, world)[rank]
        acc.add(images[share], torch.arange(n)[share])
        sides[name] = acc.finish()
    scorer.prepare(sides["real"])
    return scorer.score(sides["real"], sides["fake"])


def test_error_bars_are_identical_for_one_and_two_processes(tmp_path):
    one = run_distributed(_score, 1, tmp_path)[0]
    two = run_distributed(_score, 2, tmp_path)
    errors = ["cmmd", "coverage", "density", "fid", "is", "kid", "precision", "recall"]
    assert sorted(k for k in one if k.endswith("_se")) == [k + "_se" for k in errors]
    assert all(math.isfinite(one[k]) and one[k] > 0 for k in one if k.endswith("_se"))
    for values in two:
        assert values.keys() == one.keys()
        for key, value in one.items():
            assert values[key] == pytest.approx(value, rel=1e-9, abs=1e-15), key


def _knn_replicates(rank: int, world: int) -> list[list[float]]:
    from lightning_fid.metrics._knn_errors import precision_recall_estimate

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(90, 6, generator=g), torch.randn(101, 6, generator=g) * 1.2 + 0.2
    # 7 row blocks of the generated set: its neighbour candidates come from blocks dealt to every rank
    p, r = precision_recall_estimate(real, fake, 3, groups=10, block_size=16, distributed=world > 1)
    return [p.replicates.tolist(), r.replicates.tolist(), [p.value, r.value]]


def test_recall_replicates_are_identical_when_the_blocks_are_dealt_to_processes(tmp_path):
    one = _knn_replicates(0, 1)
    assert max(one[1]) > min(one[1])  # the replicates differ: the comparison is not of constants
    for result in run_distributed(_knn_replicates, 3, tmp_path):  # 7 x 7 blocks dealt unevenly to 3 ranks
        assert result == one
