"""Per-class FID and intra-FID: real labels from the batches (label_key), generated labels from
conditions; values equal the Fréchet distance of each class computed directly."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from helpers.tiny import TinyFeatures, TinyGAN, loaders, make_callback, real_images, trainer_kwargs
from torch.utils.data import TensorDataset

from lightning_fid import RealData
from lightning_fid.engine._images import to_uint8
from lightning_fid.engine._pipeline import check_class_memory
from lightning_fid.engine._sampling import noise_generator
from lightning_fid.extractors.base import run_extractor
from lightning_fid.metrics import frechet_distance

CLASSES = 3
LABELS = torch.arange(30) % CLASSES
REAL_LABELS = torch.arange(37) % CLASSES


def conditional(module, batch_size, generator, conditions):
    return module.sample_images(batch_size, generator) * (0.5 + 0.2 * conditions.view(-1, 1, 1, 1))


def per_class_callback(tmp_path=None, label_key=1, **kw):
    args = dict(
        real=RealData(TensorDataset(real_images(37), REAL_LABELS), label_key=label_key),
        sample_fn=conditional,
        conditions=LABELS,
        num_samples=30,
        metrics=("fid", "fid_per_class", "intra_fid"),
    )
    args.update(kw)
    return make_callback(tmp_path, **args)


def _direct(model):
    model.eval()
    batches = [(s, min(5, 30 - s)) for s in range(0, 30, 5)]
    images = torch.cat(
        [conditional(model, n, noise_generator(0, b), LABELS[s : s + n]) for b, (s, n) in enumerate(batches)]
    ).detach()
    fake = run_extractor(TinyFeatures(), to_uint8(images, (-1, 1)), (0.0, 1.0)).double()
    real = run_extractor(TinyFeatures(), to_uint8(real_images(37), (-1, 1)), (0.0, 1.0)).double()
    values = {}
    for c in range(CLASSES):
        r, f = real[REAL_LABELS == c], fake[LABELS == c]
        values[c] = frechet_distance(r.mean(0), torch.cov(r.T), f.mean(0), torch.cov(f.T))
    return values


def test_per_class_fid_and_intra_fid_equal_direct_computation(tmp_path):
    cb = per_class_callback(tmp_path)
    model = TinyGAN()
    pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=1)).fit(model, *loaders())
    expected = _direct(model)
    got = cb.history[-1]
    for c in range(CLASSES):
        assert got[f"fid/class_{c}"] == pytest.approx(expected[c], rel=1e-9), c
    assert got["intra_fid"] == pytest.approx(sum(expected.values()) / CLASSES, rel=1e-9)
    assert "intra_fid" in cb.keys()
    again = per_class_callback(tmp_path)  # reference (with its per-class moments) from the cache
    assert again.evaluate(model)[0]["intra_fid"] == pytest.approx(got["intra_fid"], rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"label_key": None}, r"need conditions= .* and RealData\(label_key="),
        ({"conditions": LABELS.float()}, "non-negative integer class labels"),
        ({"sample_fn": conditional, "conditions": None}, "need conditions="),
    ],
)
def test_per_class_arguments_are_checked_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        per_class_callback(**kwargs)


def test_missing_real_class_fails_before_training(tmp_path):
    real_labels = torch.zeros(37, dtype=torch.long)  # class 1 and 2 never appear in the real data
    cb = per_class_callback(tmp_path, real=RealData(TensorDataset(real_images(37), real_labels), label_key=1))
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=1))
    with pytest.raises(ValueError, match=r"classes \[1, 2\] have fewer"):
        trainer.fit(TinyGAN(), *loaders())
    assert trainer.global_step == 0


def test_real_labels_outside_the_classes_are_refused(tmp_path):
    cb = per_class_callback(tmp_path, real=RealData(TensorDataset(real_images(37), REAL_LABELS + 5), label_key=1))
    with pytest.raises(ValueError, match="outside the 3 classes"):
        cb.evaluate(TinyGAN())


def test_memory_budget_is_stated_and_enforced():
    check_class_memory(100, 2048)  # 3.1 GiB: within the 4 GiB budget
    with pytest.raises(ValueError, match=r"1000 classes need 31.2 GiB .* over the 4 GiB budget"):
        check_class_memory(1000, 2048)


def test_a_class_without_generated_samples_is_refused_or_gives_nan_with_a_warning(tmp_path):
    labels = torch.cat([torch.zeros(29, dtype=torch.long), torch.tensor([2])])  # class 1 never generated
    with pytest.raises(ValueError, match=r"classes \[1, 2\] get fewer than 2 of the 30 generated samples"):
        per_class_callback(tmp_path, conditions=labels)  # knowable before training
    cb = per_class_callback(tmp_path)
    with pytest.warns(UserWarning, match=r"intra-FID is NaN: classes \[1, 2\]"):
        values, _ = cb.evaluate(TinyGAN(), 4)  # labels 0, 1, 2, 0: one sample of classes 1 and 2
    assert math.isnan(values["intra_fid"]) and math.isnan(values["fid/class_1"]) and values["fid/class_0"] > 0
