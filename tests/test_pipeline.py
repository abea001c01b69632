"""The data walk on its own: slots from the metric table, one extraction per slot, merge, NaN sets."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import TinyEmbed, TinyFeatures, TinyGAN, real_images, sample, tiny_slots

from lightning_fid.engine._dry_run import dry_run
from lightning_fid.engine._images import to_uint8
from lightning_fid.engine._pipeline import Accumulator, sample_and_extract
from lightning_fid.engine._sampling import make_sampler, noise_generator
from lightning_fid.extractors.base import run_extractor


def test_slots_come_from_the_metrics_needs():
    slots = tiny_slots(("fid", "kid", "cmmd"), TinyFeatures(), TinyEmbed(seed=5))
    assert [(s.name, s.moments, s.keep_features) for s in slots] == [
        ("tiny-features", True, True),
        ("tiny-embed", False, True),
    ]
    assert [(s.name, s.moments, s.keep_features) for s in tiny_slots(("kid",))] == [("tiny-features", False, True)]
    assert slots[0].info.name == "tiny-features" and slots[0].info.feature_dim == 8


def test_one_forward_pass_per_image_feeds_fid_and_kid():
    slots = tiny_slots(("fid", "kid"), TinyFeatures())
    acc = Accumulator(slots, torch.device("cpu"))
    images = to_uint8(real_images(10), (-1, 1))
    acc.add(images[:6], torch.arange(6))
    acc.add(images[6:], torch.arange(6, 10))
    stats = acc.finish()["tiny-features"]
    assert slots[0].module.module.calls == 2  # two batches, one pass each, shared by FID and KID
    feats = run_extractor(TinyFeatures(), images, (0.0, 1.0)).double()
    torch.testing.assert_close(stats.mu, feats.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.sigma, torch.cov(feats.T), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stats.features.double(), feats, rtol=1e-6, atol=1e-7)
    assert stats.n == 10


def test_features_are_merged_in_global_order_whatever_the_add_order():
    slots = tiny_slots(("kid",), TinyFeatures())
    images = to_uint8(real_images(9), (-1, 1))
    acc = Accumulator(slots, torch.device("cpu"))
    acc.add(images[5:], torch.arange(5, 9))
    acc.add(images[:5], torch.arange(5))
    ordered = run_extractor(TinyFeatures(), images, (0.0, 1.0))
    torch.testing.assert_close(acc.finish()["tiny-features"].features, ordered, rtol=0, atol=0)


def test_sample_and_extract_uses_fixed_noise_and_restores_mode():
    model = TinyGAN().train()
    slots = tiny_slots(("fid",), TinyFeatures())
    out = sample_and_extract(
        make_sampler(sample, model),
        model,
        slots,
        num_samples=12,
        batch_size=5,
        seed=3,
        input_range=(-1, 1),
        device=torch.device("cpu"),
        grid_size=4,
    )
    assert model.training and out.grid is not None and out.grid.dtype == torch.uint8
    model.eval()
    images = torch.cat([model.sample_images(n, noise_generator(3, b)) for b, n in enumerate((5, 5, 2))])
    feats = run_extractor(TinyFeatures(), to_uint8(images.detach(), (-1, 1)), (0.0, 1.0)).double()
    torch.testing.assert_close(out.stats["tiny-features"].mu, feats.mean(0), rtol=1e-12, atol=1e-12)


def test_non_finite_images_invalidate_the_whole_set():
    slots = tiny_slots(("fid", "kid"), TinyFeatures())

    def nan_in_second_batch(module, n, generator):
        images = sample(module, n, generator)
        return images * float("nan") if n == 2 else images

    out = sample_and_extract(
        make_sampler(nan_in_second_batch, None),
        TinyGAN(),
        slots,
        num_samples=7,
        batch_size=5,
        seed=0,
        input_range=(-1, 1),
        device=torch.device("cpu"),
    )
    assert out.stats is None


@pytest.mark.parametrize(
    "sample_fn, match",
    [
        (lambda m, n, g: torch.zeros(n, 3, 8), "returned shape"),
        (lambda m, n, g: torch.rand(n, 3, 8, 8) * 255, "set input_range"),
        (lambda m, n, g: [torch.zeros(3, 8, 8)] * n, "must return a tensor"),
    ],
)
def test_dry_run_names_the_problem(sample_fn, match):
    slots = tiny_slots(("fid",), TinyFeatures())
    with pytest.raises(ValueError, match=f"dry run: .*{match}"):
        dry_run(
            make_sampler(sample_fn, None),
            TinyGAN(),
            slots,
            batch_sizes=[4],
            seed=0,
            input_range=(-1, 1),
            device=torch.device("cpu"),
        )


def test_dry_run_catches_a_lying_extractor():
    class Lies(TinyFeatures):
        feature_dim = 16  # but returns 8

    slots = tiny_slots(("fid",), Lies())
    slots[0].info = type(slots[0].info)(slots[0].info.name, 16, (0.0, 1.0), "x")
    with pytest.raises(ValueError, match="returned 8 features, declared 16"):
        dry_run(
            make_sampler(sample, None),
            TinyGAN(),
            slots,
            batch_sizes=[4],
            seed=0,
            input_range=(-1, 1),
            device=torch.device("cpu"),
        )
