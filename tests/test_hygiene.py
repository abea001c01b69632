"""Numbers that do not move with the environment, and evaluation that never changes training:
RNG states, autocast / TF32 guards, conditions dealt by global index, shared extractors."""

from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.tiny import Z_DIM, TinyFeatures, TinyGAN, loaders, make_callback, standard_metrics, trainer_kwargs

from lightning_fid.engine._hygiene import full_precision, is_full_precision, preserved_rng


class NoisyGAN(TinyGAN):
    """Training draws from the global RNGs (torch, numpy, python), as many real training steps do."""

    def training_step(self, batch, batch_idx):
        z = torch.randn(batch[0].shape[0], Z_DIM) * (1 + 0.01 * np.random.rand() + 0.01 * random.random())
        return F.mse_loss(self(z), batch[0])


def _train(tmp_path, cache_dir):
    pl.seed_everything(7)
    model = NoisyGAN()
    cb = make_callback(tmp_path, cache_dir=cache_dir, metrics=standard_metrics()[:2])
    train = torch.utils.data.DataLoader(loaders()[0].dataset, batch_size=8, shuffle=True)
    pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=3)).fit(model, train, loaders()[1])
    return model, cb


def test_cache_hit_trains_exactly_like_cache_miss(tmp_path):
    miss_model, miss_cb = _train(tmp_path / "a", tmp_path / "cache")
    hit_model, hit_cb = _train(tmp_path / "b", tmp_path / "cache")  # reference statistics from the cache now
    pl.seed_everything(7)
    plain = NoisyGAN()
    train = torch.utils.data.DataLoader(loaders()[0].dataset, batch_size=8, shuffle=True)
    pl.Trainer(**trainer_kwargs(tmp_path / "c", max_epochs=3)).fit(plain, train, loaders()[1])
    for a, b, c in zip(miss_model.parameters(), hit_model.parameters(), plain.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)  # evaluation leaves no trace on training
    assert [h["fid"] for h in miss_cb.history] == [h["fid"] for h in hit_cb.history]


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def _seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_preserved_rng_restores_every_generator():
    _seed(1)
    expected = _draws()
    _seed(1)
    with preserved_rng():
        _draws()
        torch.rand(5)
    assert _draws() == expected


class PrecisionSpy(TinyFeatures):
    """Records whether extraction ran in full precision."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(is_full_precision())
        return super().forward(x)


def test_autocast_outside_does_not_change_the_value_and_flags_are_restored(tmp_path):
    spy = PrecisionSpy()
    cb = make_callback(tmp_path, metrics=standard_metrics()[:2], feature_extractor=spy)
    model = TinyGAN()
    plain, _ = cb.evaluate(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside, _ = cb.evaluate(model)
        assert torch.is_autocast_enabled("cpu")  # the user's autocast is back after the evaluation
    assert inside["fid"] == plain["fid"] and inside["kid"] == plain["kid"]
    assert spy.seen and all(spy.seen)
    assert not is_full_precision() or not torch.is_autocast_enabled("cpu")


def test_sample_autocast_opts_the_generator_into_bfloat16(tmp_path):
    dtypes = []

    def sample(module, n, generator):
        images = module.sample_images(n, generator)
        dtypes.append(images.dtype)
        return images

    cb = make_callback(tmp_path, metrics=("fid",), sample_fn=sample, sample_autocast=torch.bfloat16)
    exact = make_callback(tmp_path, metrics=("fid",))
    model = TinyGAN()
    fast, _ = cb.evaluate(model)
    reference, _ = exact.evaluate(model)
    assert torch.bfloat16 in dtypes
    assert fast["fid"] == pytest.approx(reference["fid"], rel=0.05) and fast["fid"] != reference["fid"]


def test_full_precision_sets_and_restores_the_float32_switches():
    owners = [torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.mkldnn.matmul]
    if not all(hasattr(o, "fp32_precision") for o in owners):
        pytest.skip("this torch has no fp32_precision API")
    saved = [o.fp32_precision for o in owners]
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        with full_precision():
            assert is_full_precision()
            assert [o.fp32_precision for o in owners] == ["ieee", "ieee", "ieee"]
        assert [o.fp32_precision for o in owners] == ["tf32", "tf32", "bf16"]
    finally:
        for owner, value in zip(owners, saved):
            owner.fp32_precision = value


def test_conditions_are_paired_with_global_sample_indices(tmp_path):
    seen = {}

    def conditional(module, n, generator, index, conditions):
        for i, c in zip(index.tolist(), conditions.tolist()):
            seen.setdefault(i, set()).add(c)
        return module.sample_images(n, generator) * (0.5 + 0.05 * conditions.view(-1, 1, 1, 1).float())

    labels = torch.arange(23) % 4
    cb = make_callback(tmp_path, metrics=("fid",), sample_fn=conditional, conditions=labels)
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=2))
    trainer.fit(TinyGAN(lr=0.0, bn_momentum=0.0), *loaders())
    assert sorted(seen) == list(range(23))  # every sample index, the dry run included, got ...
    assert all(s == {i % 4} for i, s in seen.items())  # ... exactly its own label, every time


def test_three_argument_samplers_and_sample_images_with_keywords(tmp_path):
    class Conditional(TinyGAN):
        def sample_images(self, batch_size, generator, conditions=None):
            return super().sample_images(batch_size, generator) * (1 if conditions is None else 0.5)

    prompts = [f"a photo of digit {i % 10}" for i in range(23)]
    with_prompts = make_callback(tmp_path, metrics=("fid",), sample_fn=None, conditions=prompts)
    plain = make_callback(tmp_path, metrics=("fid",))
    model = Conditional()
    assert with_prompts.evaluate(model)[0]["fid"] != plain.evaluate(model)[0]["fid"]
    with pytest.raises(ValueError, match="conditions has 5 entries but 23"):
        make_callback(tmp_path, conditions=prompts[:5])
    no_keyword = make_callback(tmp_path, metrics=("fid",), conditions=prompts)  # 3-argument sample_fn
    with pytest.raises(ValueError, match="declares no `conditions` keyword"):
        no_keyword.evaluate(model)


def test_two_callbacks_share_one_extractor_and_one_reference_pass(tmp_path):
    features = TinyFeatures()
    first = make_callback(tmp_path, metrics=("fid",), feature_extractor=features)
    second = make_callback(tmp_path, metrics=("fid",), feature_extractor=features, prefix="ema/", num_samples=10)
    trainer = pl.Trainer(callbacks=[first, second], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(TinyGAN(), *loaders())
    assert second.evaluator.slots[0].module.module is first.evaluator.slots[0].module.module
    assert second.evaluator.reference is first.evaluator.reference  # one real pass for both
    dry_runs = 2 * 1  # one full batch each
    sampling = 5 + 2  # 23 samples in batches of 5, and 10 in batches of 5
    assert features.calls == 8 + dry_runs + sampling  # 8 real batches once, not twice
