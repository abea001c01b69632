"""Fixed-noise sampling: the same global sample set for any number of processes."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import TinyGAN, sample

from lightning_fid.engine._sampling import batch_seed, generate, make_sampler, noise_generator, plan


@pytest.mark.parametrize("world", [1, 2, 3])
def test_plan_deals_every_sample_once_round_robin(world):
    batches = [b for rank in range(world) for b in plan(23, 5, rank, world)]
    assert sorted(b.index for b in batches) == [0, 1, 2, 3, 4]
    covered = torch.cat([b.sample_index for b in sorted(batches, key=lambda b: b.index)])
    assert torch.equal(covered, torch.arange(23))
    assert all(b.index % world == rank for rank in range(world) for b in plan(23, 5, rank, world))


def test_noise_depends_only_on_seed_and_batch():
    a = torch.randn(4, generator=noise_generator(7, 2))
    b = torch.randn(4, generator=noise_generator(7, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.randn(4, generator=noise_generator(7, 3)))
    assert not torch.equal(a, torch.randn(4, generator=noise_generator(8, 2)))
    assert batch_seed(0, 1) != batch_seed(1, 0) and 0 <= batch_seed(5, 5) < 2**63


def test_generate_samples_in_eval_mode_without_grad_and_restores_training():
    model = TinyGAN().train()
    seen = []

    def spy(module, n, generator):
        seen.append((module.training, torch.is_grad_enabled()))
        return sample(module, n, generator)

    out = list(generate(make_sampler(spy, model), model, plan(7, 5), seed=0))
    assert [b.size for b, _ in out] == [5, 2] and seen == [(False, False), (False, False)]
    assert model.training


def test_generate_refuses_wrong_batches_and_still_restores_mode():
    model = TinyGAN().train()
    with pytest.raises(ValueError, match=r"returned shape \(4, 3, 8, 8\); expected \(5, C, H, W\)"):
        list(generate(make_sampler(lambda m, n, g: torch.zeros(4, 3, 8, 8), model), model, plan(5, 5), seed=0))
    assert model.training
