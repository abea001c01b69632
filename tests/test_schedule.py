"""Schedules by steps and epochs in real Trainers: infinite data, val_check_interval, validate/test,
evaluate() outside fit, and configurations that can never fire."""

from __future__ import annotations

import csv
import json

import lightning.pytorch as pl
import pytest
import torch
from helpers.tiny import TinyGAN, loaders, make_callback, real_images, standard_metrics, trainer_kwargs
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_fid.callbacks._schedule import Cadence


class Endless(torch.utils.data.IterableDataset):
    """An infinite stream of real images (no __len__): epochs never end."""

    def __iter__(self):
        images = real_images(37)
        i = 0
        while True:
            yield (images[i % 37],)
            i += 1


class NoValidation(TinyGAN):
    validation_step = pl.LightningModule.validation_step


def _endless_loader():
    return torch.utils.data.DataLoader(Endless(), batch_size=4)


@pytest.mark.parametrize("validates", [True, False])
def test_every_n_steps_with_infinite_data_logs_at_the_step(tmp_path, validates):
    model = TinyGAN() if validates else NoValidation()
    cb = make_callback(tmp_path, metrics=("fid",), every_n_steps=3)
    logger = CSVLogger(tmp_path, name="csv")
    kw = trainer_kwargs(
        tmp_path,
        max_steps=7,
        max_epochs=-1,
        logger=logger,
        limit_train_batches=None,
        val_check_interval=2,
        check_val_every_n_epoch=None,
    )
    pl.Trainer(callbacks=[cb], **kw).fit(model, _endless_loader(), loaders()[1] if validates else None)
    assert [h["step"] for h in cb.history] == [3, 6]
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("fid")]
    assert [int(r["step"]) for r in rows] == [3, 6]  # curves are indexed by the step each value describes
    assert [float(r["fid"]) for r in rows] == pytest.approx([h["fid"] for h in cb.history], rel=1e-6)


def test_every_n_steps_counts_optimizer_steps_with_accumulation(tmp_path):
    cb = make_callback(tmp_path, metrics=("fid",), every_n_steps=2)
    kw = trainer_kwargs(tmp_path, max_steps=4, max_epochs=-1, limit_train_batches=None, accumulate_grad_batches=2)
    pl.Trainer(callbacks=[cb], **kw).fit(NoValidation(), _endless_loader())
    assert [h["step"] for h in cb.history] == [2, 4]  # once per step, not once per micro-batch


def test_model_checkpoint_selects_by_step_values(tmp_path):
    cb = make_callback(tmp_path, metrics=("fid",), every_n_steps=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="fid", every_n_train_steps=2, save_top_k=1)
    kw = trainer_kwargs(tmp_path, max_steps=6, max_epochs=-1, limit_train_batches=None, enable_checkpointing=True)
    pl.Trainer(callbacks=[ckpt, cb], **kw).fit(TinyGAN(lr=0.2), _endless_loader(), loaders()[1])
    fids = {h["step"]: h["fid"] for h in cb.history}
    best = min(fids, key=fids.get)
    assert list(fids) == [2, 4, 6]
    assert (
        float(ckpt.best_model_score) == pytest.approx(fids[best], rel=1e-6) and f"step={best}" in ckpt.best_model_path
    )


def test_epoch_schedule_on_endless_data_fails_before_training(tmp_path):
    cb = make_callback(tmp_path, metrics=("fid",))
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_steps=5, limit_train_batches=None))
    with pytest.raises(ValueError, match=r"never fires.*every_n_steps"):
        trainer.fit(NoValidation(), _endless_loader())
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    "callback_kw, trainer_kw, match",
    [
        ({"every_n_steps": 50}, {"max_steps": 4}, r"every_n_steps=50\) never fires"),
        ({"every_n_epochs": 5}, {"max_epochs": 2}, r"every_n_epochs=5\) never fires"),
        ({}, {"val_check_interval": 1}, r"val_check_interval=1\) does not schedule"),
    ],
)
def test_schedules_that_fire_less_than_asked_warn_before_training(tmp_path, callback_kw, trainer_kw, match):
    cb = make_callback(tmp_path, metrics=("fid",), **callback_kw)
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, **trainer_kw))
    with pytest.warns(UserWarning, match=match):
        trainer.fit(NoValidation(), loaders()[0])


def test_epoch_without_validation_run_is_evaluated_at_its_end(tmp_path):
    cb = make_callback(tmp_path, metrics=("fid",), every_n_epochs=1)
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=4, check_val_every_n_epoch=2))
    trainer.fit(TinyGAN(), *loaders())
    assert [h["epoch"] for h in cb.history] == [0, 1, 2, 3]  # epochs 0, 2 at train end, 1, 3 at validation


def test_validate_always_evaluates_and_test_logs_test_keys(tmp_path):
    cb = make_callback(tmp_path, metrics=standard_metrics()[:2], every_n_epochs=3, final_num_samples=30)

    class WithTest(TinyGAN):
        def test_step(self, batch, batch_idx):
            return None

    model = WithTest()
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path))
    (validated,) = trainer.validate(model, loaders()[1], verbose=False)
    assert validated["validate/fid"] == pytest.approx(cb.evaluate(model)[0]["fid"], rel=1e-6)
    assert cb.history == []  # its own keys, not a row of the training history
    (tested,) = trainer.test(model, loaders()[1], verbose=False)
    assert set(tested) >= {"test/fid", "test/kid", "test/kid_std"}
    direct, _ = cb.evaluate(model, 30)
    assert tested["test/fid"] == pytest.approx(direct["fid"], rel=1e-6)  # final_num_samples, not num_samples
    assert tested["test/fid"] != pytest.approx(validated["validate/fid"], rel=1e-6)


def test_evaluate_outside_fit_prepares_on_first_use(tmp_path):
    cb = make_callback(tmp_path, metrics=standard_metrics())
    model = TinyGAN()
    values, grid = cb.evaluate(model)
    trainer = pl.Trainer(callbacks=[make_callback(tmp_path, metrics=standard_metrics())], **trainer_kwargs(tmp_path))
    (validated,) = trainer.validate(model, loaders()[1], verbose=False)
    for key in ("fid", "kid", "cmmd"):
        assert values[key] == pytest.approx(validated["validate/" + key], rel=1e-6), key
    assert grid is not None and grid.dtype == torch.uint8


def test_history_file_is_written_next_to_the_logger_files(tmp_path):
    cb = make_callback(tmp_path, metrics=("fid",), prefix="val/")
    logger = CSVLogger(tmp_path, name="csv")
    pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=2, logger=logger)).fit(TinyGAN(), *loaders())
    written = json.loads((tmp_path / "csv" / "version_0" / "lightning_fid_history_val.json").read_text())
    assert [e["fid"] for e in written["evaluations"]] == [h["fid"] for h in cb.history]  # float64, exactly


@pytest.mark.parametrize(
    "kw", [{"every_n_epochs": 0}, {"every_n_epochs": 2, "every_n_steps": 3}, {"every_n_steps": -1}]
)
def test_cadence_arguments_are_checked(kw):
    with pytest.raises(ValueError, match="every_n"):
        make_callback(**kw)


def test_step_due_fires_once_per_multiple_even_when_steps_jump():
    cadence = Cadence(None, 3)
    fired, last = [], None
    for step in (2, 4, 4, 6, 8, 10, 12):  # two optimizers: the global step moves by 2
        if cadence.step_due(step, last):
            fired.append(step)
            last = step
    assert fired == [4, 6, 10, 12]


def test_a_reused_callback_starts_a_new_run(tmp_path):
    cb = make_callback(tmp_path, metrics=("fid",), every_n_steps=2)
    for _ in range(2):  # a sweep or a notebook: the same callback, a new Trainer
        kw = trainer_kwargs(tmp_path, max_steps=4, max_epochs=-1, limit_train_batches=None)
        pl.Trainer(callbacks=[cb], **kw).fit(NoValidation(), _endless_loader())
        assert [h["step"] for h in cb.history] == [2, 4]  # the second run evaluates from its start again


def test_resuming_a_step_schedule_adds_no_extra_evaluation(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    first = make_callback(tmp_path, metrics=("fid",), every_n_steps=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=3)
    kw = trainer_kwargs(tmp_path, max_steps=3, max_epochs=-1, limit_train_batches=None, enable_checkpointing=True)
    pl.Trainer(callbacks=[first, ckpt], **kw).fit(NoValidation(), _endless_loader())
    resumed = make_callback(tmp_path, metrics=("fid",), every_n_steps=3)
    kw = trainer_kwargs(tmp_path, max_steps=6, max_epochs=-1, limit_train_batches=None, enable_checkpointing=True)
    pl.Trainer(callbacks=[resumed], **kw).fit(NoValidation(), _endless_loader(), ckpt_path=ckpt.last_model_path)
    assert [h["step"] for h in resumed.history] == [3, 6]  # not 3, 4, 6
