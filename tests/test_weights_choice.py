"""Which weights are scored: raw, or Lightning's EMA average, independent of callback order and of
whether the module validates; final values use the same weights as the history."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from helpers.tiny import TinyGAN, loaders, make_callback, standard_metrics, trainer_kwargs
from lightning.pytorch.callbacks import EMAWeightAveraging


class NoValidation(TinyGAN):
    validation_step = pl.LightningModule.validation_step


def _fit(tmp_path, weights="auto", order="metrics_first", validates=True, decay=0.5, final=None, **ema_kw):
    torch.manual_seed(0)
    cb = make_callback(tmp_path, metrics=standard_metrics()[:2], weights=weights, final_num_samples=final)
    ema = EMAWeightAveraging(decay=decay, **ema_kw)
    callbacks = [cb, ema] if order == "metrics_first" else [ema, cb]
    model = (TinyGAN if validates else NoValidation)(lr=0.3)
    pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=3)).fit(model, *loaders())
    return cb, model


def _values(cb):
    return [{k: v for k, v in h.items() if k != "eval_seconds"} for h in cb.history]


def test_both_logs_averaged_and_raw_and_they_differ(tmp_path):
    cb, _ = _fit(tmp_path, weights="both")
    for entry in cb.history:
        assert {"fid", "fid_raw", "kid", "kid_raw", "kid_std_raw"} <= set(entry)
        assert entry["fid"] != pytest.approx(entry["fid_raw"], rel=1e-6)
    auto, _ = _fit(tmp_path, weights="auto")
    raw, _ = _fit(tmp_path, weights="raw")
    assert [h["fid"] for h in auto.history] == pytest.approx([h["fid"] for h in cb.history], rel=1e-12)
    assert [h["fid"] for h in raw.history] == pytest.approx([h["fid_raw"] for h in cb.history], rel=1e-12)


@pytest.mark.parametrize("order, validates", [("ema_first", True), ("metrics_first", False), ("ema_first", False)])
def test_values_do_not_depend_on_callback_order_or_validation(tmp_path, order, validates):
    reference, _ = _fit(tmp_path / "ref", weights="both")
    other, _ = _fit(tmp_path / "other", weights="both", order=order, validates=validates)
    for a, b in zip(_values(reference), _values(other)):
        for key in ("fid", "fid_raw", "kid", "kid_raw"):
            assert b[key] == pytest.approx(a[key], rel=1e-12), (key, order, validates)


@pytest.mark.parametrize("order", ["metrics_first", "ema_first"])
def test_final_values_use_the_history_weights(tmp_path, order):
    cb, model = _fit(tmp_path, weights="both", order=order, final=30)
    assert set(cb.final_metrics) == {
        "final_fid",
        "final_kid",
        "final_kid_std",
        "final_fid_raw",
        "final_kid_raw",
        "final_kid_std_raw",
        "final_fid_se",  # error bars, on by default
        "final_kid_se",
        "final_fid_se_raw",
        "final_kid_se_raw",
    }
    averaged_now, _ = make_callback(tmp_path, metrics=standard_metrics()[:2]).evaluate(
        model, 30
    )  # the module holds the EMA now
    assert cb.final_metrics["final_fid"] == pytest.approx(averaged_now["fid"], rel=1e-12)
    reference, _ = _fit(tmp_path / "ref", weights="both", final=30)
    assert cb.final_metrics["final_fid_raw"] == pytest.approx(reference.final_metrics["final_fid_raw"], rel=1e-12)


def test_before_the_first_average_update_raw_weights_are_scored_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="has not been updated yet"):
        cb, _ = _fit(tmp_path, weights="both", update_starting_at_step=10_000)
    for entry in cb.history:
        assert entry["fid"] == entry["fid_raw"]  # honest: both are the raw weights, and the warning says so


def test_averaged_without_an_averaging_callback_fails_before_training(tmp_path):
    cb = make_callback(tmp_path, weights="averaged")
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path))
    with pytest.raises(ValueError, match="needs a WeightAveraging callback"):
        trainer.fit(TinyGAN(), *loaders())


def test_outside_fit_only_the_current_weights_are_scored(tmp_path):
    class WithTest(TinyGAN):
        def test_step(self, batch, batch_idx):
            return None

    cb = make_callback(tmp_path, metrics=("fid",), weights="both")
    trainer = pl.Trainer(callbacks=[cb, EMAWeightAveraging(decay=0.5)], **trainer_kwargs(tmp_path, max_epochs=2))
    model = WithTest(lr=0.3)
    trainer.fit(model, *loaders())
    with pytest.warns(UserWarning, match="outside fit only the module's current weights"):
        (tested,) = trainer.test(model, loaders()[1], verbose=False)
    assert "test/fid" in tested and "test/fid_raw" not in tested  # no raw score that is really the average
    assert tested["test/fid"] == pytest.approx(
        make_callback(tmp_path, metrics=("fid",)).evaluate(model)[0]["fid"], rel=1e-6
    )
