"""GenerativeMetrics in a real Trainer on CPU: exact values, schedule, sources, resume, pickling, errors."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from helpers.tiny import (
    TinyEmbed,
    TinyFeatures,
    TinyGAN,
    fit_recording_steps,
    loaders,
    make_callback,
    real_images,
    standard_metrics,
    trainer_kwargs,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset

from lightning_fid import RealData
from lightning_fid.engine._images import to_uint8
from lightning_fid.engine._sampling import noise_generator
from lightning_fid.extractors.base import Frozen, run_extractor
from lightning_fid.metrics import KID, cmmd, frechet_distance, kid

ALL = ("fid", "kid", "cmmd")


def expected_values(model, n=23, batch=5, seed=0, real_n=37):
    """Independent computation: sample the same fixed noise, extract, and call the metric functions."""
    model.eval()
    images = torch.cat(
        [model.sample_images(min(batch, n - s), noise_generator(seed, b)) for b, s in enumerate(range(0, n, batch))]
    ).detach()
    fake_u8, real_u8 = to_uint8(images, (-1, 1)), to_uint8(real_images(real_n), (-1, 1))
    feats, embed = Frozen(TinyFeatures()), Frozen(TinyEmbed(seed=5))
    fr, ff = run_extractor(feats, real_u8, (0.0, 1.0)).double(), run_extractor(feats, fake_u8, (0.0, 1.0)).double()
    er, ef = run_extractor(embed, real_u8, (0.0, 1.0)), run_extractor(embed, fake_u8, (0.0, 1.0))
    return {
        "fid": frechet_distance(fr.mean(0), torch.cov(fr.T), ff.mean(0), torch.cov(ff.T)),
        "kid": kid(fr.float(), ff.float(), 4, 10, seed)[0],
        "cmmd": cmmd(er, ef),
    }


def test_logged_values_equal_direct_computation(tmp_path):
    model = TinyGAN()
    cb = make_callback(tmp_path)
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=2))
    train, val = loaders()
    trainer.fit(model, train, val)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    expected = expected_values(model)
    exact = cb.history[-1]  # float64, as computed; Lightning stores logged scalars as float32
    for key in ALL:
        assert exact[key] == pytest.approx(expected[key], rel=1e-9), key
        assert logged[key] == pytest.approx(expected[key], rel=1e-6), key
    assert "kid_std" in logged and logged["eval_seconds"] > 0
    assert [h["epoch"] for h in cb.history] == [0, 1]
    assert logged["fid"] > 0.01 and logged["cmmd"] > 0
    assert not any("proj" in k for k in model.state_dict())  # extractors are not in the module's state_dict


def test_resume_gives_the_same_later_values(tmp_path):
    train, val = loaders()
    full_cb = make_callback(tmp_path / "a")
    pl.seed_everything(0)
    trainer = pl.Trainer(callbacks=[full_cb], **trainer_kwargs(tmp_path / "a", max_epochs=4, enable_checkpointing=True))
    trainer.fit(TinyGAN(), train, val)

    pl.seed_everything(0)
    first_cb = make_callback(tmp_path / "b")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "b" / "ckpt", save_last=True)
    trainer = pl.Trainer(
        callbacks=[first_cb, ckpt], **trainer_kwargs(tmp_path / "b", max_epochs=2, enable_checkpointing=True)
    )
    trainer.fit(TinyGAN(), train, val)
    state = torch.load(ckpt.last_model_path, weights_only=False)
    pl.seed_everything(123)  # a different seed: the fixed noise must come from the checkpoint
    resumed_cb = make_callback(tmp_path / "b", seed=99)
    trainer = pl.Trainer(
        callbacks=[resumed_cb], **trainer_kwargs(tmp_path / "b", max_epochs=4, enable_checkpointing=True)
    )
    trainer.fit(TinyGAN(), train, val, ckpt_path=ckpt.last_model_path)
    assert any(k.startswith("GenerativeMetrics") for k in state["callbacks"])
    assert resumed_cb.evaluator.seed == 0
    assert [h["epoch"] for h in resumed_cb.history] == [0, 1, 2, 3]
    for before, after in zip(full_cb.history[2:], resumed_cb.history[2:]):
        for key in ALL:
            assert after[key] == pytest.approx(before[key], rel=1e-9), key


def test_nan_generator_logs_nan_with_warning(tmp_path):
    cb = make_callback(tmp_path)
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=2))
    with pytest.warns(UserWarning, match=r"epoch 1, step \d+: the generator produced NaN/inf images"):
        trainer.fit(TinyGAN(nan_from_epoch=1), *loaders())
    assert math.isfinite(cb.history[0]["fid"])
    assert all(math.isnan(cb.history[1][k]) for k in ("fid", "kid", "kid_std", "cmmd"))
    assert math.isnan(float(trainer.callback_metrics["fid"]))


def _fails_before_training(tmp_path, model=None, **kw):
    try:
        fit_recording_steps(tmp_path, model, max_epochs=1, **kw)
    finally:
        assert not fit_recording_steps.trained, "the error must come before the first training step"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sample_fn": lambda m, n, g: torch.zeros(n, 3, 8)}, "returned shape"),
        ({"sample_fn": lambda m, n, g: torch.zeros(n + 1, 3, 8, 8)}, "returned shape"),
        ({"sample_fn": lambda m, n, g: torch.rand(n, 3, 8, 8) * 255}, "set input_range"),
        ({"sample_fn": lambda m, n, g: torch.zeros(n, 4, 8, 8)}, "alpha channel"),
        ({"real": torch.utils.data.TensorDataset(torch.zeros(0, 3, 8, 8))}, "real data is empty"),
        (
            {"metrics": ("fid", KID(subset_size=20)), "real": RealData(TensorDataset(real_images(37)), num_real=15)},
            "larger than the 15 real samples",
        ),
    ],
)
def test_misconfiguration_raises_before_training(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _fails_before_training(tmp_path, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"metrics": ("fid", "isc")}, "unknown metric"),
        ({"num_samples": 1}, "at least 2 generated samples"),
        ({"metrics": (KID(subset_size=50),)}, r"KID\(subset_size=50\) is larger than num_samples=23"),
        ({"real": "ref.npz"}, "no such image folder or reference file"),
        ({"input_range": (1, -1)}, "low < high"),
        ({"real": None}, "real= is required"),
    ],
)
def test_bad_arguments_raise_at_construction(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_callback(tmp_path, **kwargs)


def test_missing_sample_fn_and_method(tmp_path):
    class NoSampler(TinyGAN):
        sample_images = None

    with pytest.raises(ValueError, match="define NoSampler.sample_images"):
        _fails_before_training(tmp_path, model=NoSampler(), sample_fn=None)


def test_sample_images_method_is_used_and_modes_restored(tmp_path):
    model = TinyGAN()
    cb = make_callback(tmp_path, sample_fn=None, metrics=("fid",))
    modes = []

    class ModeSpy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, *a):
            modes.append(pl_module.training)

    trainer = pl.Trainer(callbacks=[cb, ModeSpy()], **trainer_kwargs(tmp_path, max_epochs=2))
    trainer.fit(model, *loaders())
    assert len(cb.history) == 2 and all(modes)  # back in train mode after every evaluation
    explicit = make_callback(tmp_path, metrics=("fid",))  # the same run with sample_fn given
    pl.Trainer(callbacks=[explicit], **trainer_kwargs(tmp_path, max_epochs=2)).fit(TinyGAN(), *loaders())
    assert [h["fid"] for h in cb.history] == [h["fid"] for h in explicit.history]


def test_npz_reference_and_train_source_and_dict_batches(tmp_path):
    from lightning_fid.engine._accumulators import FeatureMoments

    feats = run_extractor(Frozen(TinyFeatures()), to_uint8(real_images(37), (-1, 1)), (0.0, 1.0))
    FeatureMoments(8).update(feats).save(tmp_path / "ref.npz")
    model = TinyGAN(lr=0.0, bn_momentum=0.0)  # reused across fits: must not change
    via_npz = make_callback(tmp_path, real=str(tmp_path / "ref.npz"), metrics=("fid",), use_cache=False)
    pl.Trainer(callbacks=[via_npz], **trainer_kwargs(tmp_path, max_epochs=1)).fit(model, *loaders())

    class DictData(torch.utils.data.Dataset):
        def __len__(self):
            return 37

        def __getitem__(self, i):
            return {"label": 0, "pixels": real_images(37)[i]}

    via_dict = make_callback(tmp_path, real=RealData(DictData(), image_key="pixels"), metrics=("fid",), use_cache=False)
    pl.Trainer(callbacks=[via_dict], **trainer_kwargs(tmp_path, max_epochs=1)).fit(model, *loaders())
    via_train = make_callback(tmp_path, real="train", metrics=("fid",), use_cache=False)

    class WithLoader(TinyGAN):
        def train_dataloader(self):
            return loaders()[0]

    m2 = WithLoader(lr=0.0, bn_momentum=0.0)
    m2.load_state_dict(model.state_dict())
    pl.Trainer(callbacks=[via_train], **trainer_kwargs(tmp_path, max_epochs=1)).fit(m2, val_dataloaders=loaders()[1])
    values = [via_npz.history[0]["fid"], via_dict.history[0]["fid"], via_train.history[0]["fid"]]
    assert values[1] == pytest.approx(values[0], rel=1e-9) and values[2] == pytest.approx(values[0], rel=1e-9)


def test_image_folder_reference_matches_tensor_reference(tmp_path):
    from PIL import Image

    folder = tmp_path / "real"
    folder.mkdir()
    for i, img in enumerate(to_uint8(real_images(37), (-1, 1))):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    model = TinyGAN(lr=0.0, bn_momentum=0.0)
    a = make_callback(tmp_path, real=str(folder), metrics=standard_metrics()[:2], use_cache=False)
    b = make_callback(tmp_path, metrics=standard_metrics()[:2], use_cache=False)
    for cb in (a, b):
        pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=1)).fit(model, *loaders())
    assert a.history[0]["fid"] == pytest.approx(b.history[0]["fid"], rel=1e-12)
    assert a.history[0]["kid"] == pytest.approx(b.history[0]["kid"], rel=1e-12)


def test_final_evaluation_two_instances_and_callable_source(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    small = make_callback(tmp_path, metrics=("fid",), final_num_samples=40)
    other = make_callback(
        tmp_path, metrics=("fid",), prefix="cb2/", real=lambda: torch.utils.data.TensorDataset(real_images(37))
    )
    logger = CSVLogger(tmp_path, name="csv")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    trainer = pl.Trainer(
        callbacks=[small, other, ckpt],
        **trainer_kwargs(tmp_path, max_epochs=1, logger=logger, enable_checkpointing=True),
    )
    trainer.fit(TinyGAN(), *loaders())
    assert set(small.final_metrics) == {"final_fid", "final_fid_se"}
    assert small.final_metrics["final_fid"] != small.history[-1]["fid"]  # 40 samples, not 23
    assert other.history[0]["fid"] == pytest.approx(small.history[0]["fid"], rel=1e-12)  # callable -> same data
    assert "cb2/fid" in trainer.callback_metrics and "fid" in trainer.callback_metrics
    state = torch.load(ckpt.last_model_path, weights_only=False)["callbacks"]
    assert len([k for k in state if k.startswith("GenerativeMetrics")]) == 2  # distinct state keys
    with open(f"{logger.log_dir}/metrics.csv") as f:
        assert "final_fid" in f.readline()


def test_trainer_validate_without_fit(tmp_path):
    cb = make_callback(tmp_path, metrics=standard_metrics()[:2])
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path))
    results = trainer.validate(TinyGAN(), loaders()[1], verbose=False)
    direct, _ = make_callback(tmp_path, metrics=standard_metrics()[:2]).evaluate(TinyGAN())
    assert results[0]["validate/fid"] == pytest.approx(direct["fid"], rel=1e-6) and "validate/kid" in results[0]
    assert cb.history == []  # trainer.validate() is not an evaluation of the training run


def test_every_n_epochs_follows_lightnings_convention(tmp_path):
    cb = make_callback(tmp_path, metrics=("fid",), every_n_epochs=2)
    pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=5)).fit(TinyGAN(), *loaders())
    assert [h["epoch"] for h in cb.history] == [1, 3]  # (epoch + 1) % 2 == 0, like check_val_every_n_epoch


def test_without_validation_step_evaluates_at_train_epoch_end(tmp_path):
    class NoValidation(TinyGAN):
        validation_step = pl.LightningModule.validation_step

    cb = make_callback(tmp_path, metrics=("fid",))
    pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=2)).fit(NoValidation(), loaders()[0])
    assert [h["epoch"] for h in cb.history] == [0, 1]


def test_callback_pickles_before_and_after_fit(tmp_path):
    import pickle

    cb = make_callback(tmp_path, sample_fn=None)  # the module's sample_images: no lambda may be stored
    pickle.dumps(cb)
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(TinyGAN(), *loaders())
    again = pickle.loads(pickle.dumps(cb))
    assert again.history == cb.history and again.evaluator.reference.key == cb.evaluator.reference.key
