"""Monitors on our keys never see a stale value: right schedules work, wrong ones fail before training."""

from __future__ import annotations

import pickle

import lightning.pytorch as pl
import pytest
import torch
from helpers.tiny import TinyGAN, loaders, make_callback, trainer_kwargs
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from lightning_fid import FreshEarlyStopping
from lightning_fid.callbacks._monitors import _Check, is_fresh
from lightning_fid.callbacks._schedule import Cadence


def _constant_fid_run(tmp_path, stopper, every_n_epochs=1, **trainer_kw):
    model = TinyGAN(lr=0.0, bn_momentum=0.0)  # the generator never changes: FID never improves after the first
    cb = make_callback(tmp_path, metrics=("fid",), every_n_epochs=every_n_epochs)
    trainer = pl.Trainer(callbacks=[stopper, cb], **trainer_kwargs(tmp_path, max_epochs=20, **trainer_kw))
    trainer.fit(model, *loaders())
    return trainer, cb


@pytest.mark.parametrize(
    "every_n_epochs, trainer_kw, stopper",
    [
        (1, {}, EarlyStopping),  # default trainer: every validation is an evaluation
        (2, {"check_val_every_n_epoch": 2}, EarlyStopping),  # Lightning's own option on the same schedule
        (2, {}, FreshEarlyStopping),  # validation every epoch, FID every 2: the opt-in subclass
    ],
)
def test_early_stopping_counts_evaluations(tmp_path, every_n_epochs, trainer_kw, stopper):
    es = stopper(monitor="fid", mode="min", patience=2)
    trainer, cb = _constant_fid_run(tmp_path, es, every_n_epochs, **trainer_kw)
    period = every_n_epochs
    evaluated = [h["epoch"] for h in cb.history]
    assert evaluated == [period - 1, 2 * period - 1, 3 * period - 1]  # best, then exactly 2 non-improving
    assert es.stopped_epoch == evaluated[-1]
    assert es.wait_count == 2


def test_stale_early_stopping_fails_before_training(tmp_path):
    es = EarlyStopping(monitor="fid", mode="min", patience=2)
    with pytest.raises(
        ValueError, match=r"EarlyStopping\(monitor='fid'\).*check_val_every_n_epoch=2.*FreshEarlyStopping"
    ):
        _constant_fid_run(tmp_path, es, every_n_epochs=2)


def test_model_checkpoint_on_matching_epochs_keeps_best_fid(tmp_path):
    model = TinyGAN(lr=0.2)
    cb = make_callback(tmp_path, metrics=("fid",), every_n_epochs=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="fid", mode="min", save_top_k=2, every_n_epochs=2)
    trainer = pl.Trainer(callbacks=[ckpt, cb], **trainer_kwargs(tmp_path, max_epochs=6, enable_checkpointing=True))
    trainer.fit(model, *loaders())
    fids = {h["epoch"]: h["fid"] for h in cb.history}
    assert list(fids) == [1, 3, 5]
    ranked = sorted(fids, key=fids.get)[:2]
    assert float(ckpt.best_model_score) == pytest.approx(fids[ranked[0]], rel=1e-6)
    assert sorted(p.split("epoch=")[1].split("-")[0] for p in ckpt.best_k_models) == sorted(map(str, ranked))


@pytest.mark.parametrize(
    "ckpt_kw, match",
    [
        ({}, r"ModelCheckpoint\(every_n_epochs=2\)"),  # default: ranks every epoch
        ({"every_n_epochs": 3}, r"ModelCheckpoint\(every_n_epochs=2\)"),
        ({"every_n_train_steps": 2}, "every_n_train_steps"),
    ],
)
def test_stale_model_checkpoint_fails_before_training(tmp_path, ckpt_kw, match):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="fid", **ckpt_kw)
    cb = make_callback(tmp_path, metrics=("fid",), every_n_epochs=2)
    trainer = pl.Trainer(callbacks=[cb, ckpt], **trainer_kwargs(tmp_path, max_epochs=2, enable_checkpointing=True))
    with pytest.raises(ValueError, match=match):
        trainer.fit(TinyGAN(), *loaders())
    assert trainer.global_step == 0


class PlateauGAN(TinyGAN):
    def __init__(self, frequency, interval="epoch"):
        super().__init__()
        self.frequency, self.interval = frequency, interval

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        return {
            "optimizer": opt,
            "lr_scheduler": {
                "scheduler": plateau,
                "monitor": "fid",
                "interval": self.interval,
                "frequency": self.frequency,
            },
        }


@pytest.mark.parametrize(
    "frequency, interval, ok", [(2, "epoch", True), (4, "epoch", True), (1, "epoch", False), (2, "step", False)]
)
def test_plateau_scheduler_on_our_key(tmp_path, frequency, interval, ok):
    cb = make_callback(tmp_path, metrics=("fid",), every_n_epochs=2)
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=4))
    if ok:
        trainer.fit(PlateauGAN(frequency, interval), *loaders())
        assert len(cb.history) == 2
    else:
        with pytest.raises(ValueError, match="LR scheduler monitoring 'fid'"):
            trainer.fit(PlateauGAN(frequency, interval), *loaders())


def test_monitors_on_other_keys_are_left_alone(tmp_path):
    es = EarlyStopping(monitor="train_loss", check_finite=False, strict=False)
    cb = make_callback(tmp_path, metrics=("fid",), every_n_epochs=2)
    pl.Trainer(callbacks=[cb, es], **trainer_kwargs(tmp_path, max_epochs=2)).fit(TinyGAN(), *loaders())
    assert len(cb.history) == 1


def test_monitor_and_callback_pickle_after_fit(tmp_path):
    es = FreshEarlyStopping(monitor="fid", mode="min", patience=5)
    trainer, cb = _constant_fid_run(tmp_path, es, every_n_epochs=2)
    for obj in (es, cb):
        pickle.loads(pickle.dumps(obj))
    assert not any(name.startswith("_lightning_fid") for name in vars(es))  # nothing patched onto it


@pytest.mark.parametrize(
    "check, cadence, fresh",
    [
        (_Check(1), Cadence(1), True),  # train-end check every epoch, evaluation every epoch
        (_Check(1), Cadence(2), False),
        (_Check(4), Cadence(2), True),
        (_Check(3), Cadence(2), False),
        (_Check(2, at_validation=True), Cadence(2), True),  # validation every 2 epochs, FID every 2
        (_Check(1, at_validation=True), Cadence(2), False),
        (_Check(None, at_validation=True), Cadence(1), True),  # validation by steps, FID at each
        (_Check(None, at_validation=True), Cadence(2), False),
        (_Check(None), Cadence(1), False),  # time-based checks never line up
        (_Check(4, by_steps=True), Cadence(None, 2), True),
        (_Check(3, by_steps=True), Cadence(None, 2), False),
        (_Check(1), Cadence(None, 2), False),  # an epoch-end check against step evaluations
        (_Check(2, by_steps=True), Cadence(1), False),
    ],
)
def test_freshness_rule(check, cadence, fresh):
    assert is_fresh(check, cadence) is fresh
