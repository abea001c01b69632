"""Paired comparisons and decisions that respect noise, in real Trainer runs: ``<key>_vs_best`` is the
difference to the best evaluation with its paired SE (and survives a resume), and the noise-aware
early stopping and checkpoint stop chasing lucky draws once the true quality plateaus."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from helpers.plateau import plain_stop, plateau_run
from helpers.tiny import TinyGAN, loaders, make_callback, trainer_kwargs
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_fid import FreshEarlyStopping, NoiseAwareCheckpoint
from lightning_fid.metrics import Estimate

PLATEAU, PATIENCE = 5, 3


def _epoch(path: str) -> int:
    return int(path.split("epoch=")[1].split("-")[0].split(".")[0])


def test_noise_aware_stopping_and_checkpoint_on_a_plateau(tmp_path, seed=0):
    stopper = FreshEarlyStopping(monitor="fid", mode="min", patience=PATIENCE, noise_aware=True)
    kept = NoiseAwareCheckpoint(dirpath=tmp_path / "noise", monitor="fid", mode="min")
    plain = ModelCheckpoint(dirpath=tmp_path / "plain", monitor="fid", mode="min", save_top_k=1)
    run = plateau_run(tmp_path, [stopper, kept, plain], seed=seed, plateau=PLATEAU)
    fids = [h["fid"] for h in run.history]
    assert all(a - b > 3 * h["fid_vs_best_se"] for a, b, h in zip(fids, fids[1 : PLATEAU + 1], run.history[1:]))
    stopped = len(fids) - 1
    assert stopped <= PLATEAU + PATIENCE  # the noise-aware stopper: within patience of the plateau
    plain_stopped = plain_stop(fids, PATIENCE)
    assert plain_stopped is None or plain_stopped >= stopped  # the plain rule never stops sooner
    # the noise-aware checkpoint keeps the plateau's first evaluation, the plain one the luckiest draw
    assert _epoch(kept.best_model_path) == PLATEAU
    assert _epoch(plain.best_model_path) == min(range(len(fids)), key=fids.__getitem__)
    assert kept.state_dict()["anchor"]["value"] == pytest.approx(fids[PLATEAU])


def test_the_plain_checkpoint_chases_noise_where_the_noise_aware_one_keeps_the_plateau(tmp_path):
    kept = NoiseAwareCheckpoint(dirpath=tmp_path / "noise", monitor="fid", mode="min")
    plain = ModelCheckpoint(dirpath=tmp_path / "plain", monitor="fid", mode="min", save_top_k=1)
    run = plateau_run(tmp_path, [kept, plain], seed=2, plateau=PLATEAU, max_epochs=PLATEAU + 10)
    fids = [h["fid"] for h in run.history]
    # The plateau's 11 evaluations draw one distribution: the first is their minimum with chance 1/11,
    # so the plain rule keeps "improving" on noise after it (here at epochs below), the noise-aware not
    records = [e for e in range(PLATEAU + 1, len(fids)) if fids[e] < min(fids[:e])]
    assert records and _epoch(plain.best_model_path) == records[-1]
    assert _epoch(kept.best_model_path) == PLATEAU


def test_vs_best_is_the_paired_difference_and_survives_a_resume(tmp_path):
    whole = make_callback(tmp_path, metrics=("fid",))
    pl.Trainer(callbacks=[whole], **trainer_kwargs(tmp_path / "whole", max_epochs=3)).fit(TinyGAN(lr=0.2), *loaders())
    first = whole.history[0]
    assert "fid_vs_best" not in first and first["fid_se"] > 0  # nothing to compare the first one with
    for i, entry in enumerate(whole.history[1:], 1):
        best = min(h["fid"] for h in whole.history[:i])
        assert entry["fid_vs_best"] == pytest.approx(entry["fid"] - best, rel=1e-9, abs=1e-12)
        assert 0 < entry["fid_vs_best_se"] < entry["fid_se"]  # paired: sharper than either value
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    first_part = make_callback(tmp_path, metrics=("fid",))
    kw = trainer_kwargs(tmp_path / "a", max_epochs=1, enable_checkpointing=True)
    pl.Trainer(callbacks=[first_part, ckpt], **kw).fit(TinyGAN(lr=0.2), *loaders())
    state = torch.load(tmp_path / "ckpt" / "epoch=0.ckpt", weights_only=False)["callbacks"]
    saved = next(v for k, v in state.items() if k.startswith("GenerativeMetrics"))
    assert len(saved["best_estimates"]["fid"]["replicates"]) == 10  # G floats per key
    resumed = make_callback(tmp_path, metrics=("fid",))
    pl.Trainer(callbacks=[resumed], **trainer_kwargs(tmp_path / "b", max_epochs=3)).fit(
        TinyGAN(lr=0.2), *loaders(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0.ckpt")
    )
    for a, b in zip(whole.history, resumed.history):
        for key in ("fid_vs_best", "fid_vs_best_se"):
            assert b.get(key, math.nan) == pytest.approx(a.get(key, math.nan), rel=1e-9, nan_ok=True), key


def test_noise_aware_decisions_need_a_key_with_error_bars(tmp_path):
    stopper = FreshEarlyStopping(monitor="fid", mode="min", noise_aware=True)
    cb = make_callback(tmp_path, metrics=("fid",), error_bars=False)
    with pytest.raises(ValueError, match=r"monitors 'fid', which has no standard error.*error_bars=True"):
        pl.Trainer(callbacks=[cb, stopper], **trainer_kwargs(tmp_path)).fit(TinyGAN(), *loaders())
    with pytest.raises(ValueError, match="save_top_k=1"):
        NoiseAwareCheckpoint(monitor="fid", save_top_k=2)
    with pytest.raises(ValueError, match="z must be a positive"):
        FreshEarlyStopping(monitor="fid", noise_aware=True, z=0)
    with pytest.raises(ValueError, match="drop the thresholds"):
        FreshEarlyStopping(monitor="fid", noise_aware=True, stopping_threshold=1.0)


def test_the_stoppers_anchor_is_checkpointed():
    stopper = FreshEarlyStopping(monitor="fid", noise_aware=True)
    stopper._anchor = Estimate(1.5, torch.arange(4.0), torch.ones(4))
    restored = FreshEarlyStopping(monitor="fid", noise_aware=True)
    restored.load_state_dict(stopper.state_dict())
    assert restored._anchor.state() == stopper._anchor.state()
    plain = FreshEarlyStopping(monitor="fid")
    plain.load_state_dict({k: v for k, v in stopper.state_dict().items() if k != "anchor"})  # an older checkpoint
    assert plain._anchor is None


@pytest.mark.parametrize("after", [{"error_bars": 20}, {"num_samples": 20}])
def test_a_resume_with_other_groups_starts_the_paired_comparisons_afresh(tmp_path, after):
    """Every kept anchor (the best evaluation's replicates, the stopper's and the checkpoint's) was made
    with 10 groups of 23 samples; after a resume with other groups or another sample count a paired
    difference is undefined: each says so once and starts afresh, instead of NaN for ever after."""

    def callbacks(**overrides):
        return [
            make_callback(tmp_path, metrics=("fid",), **overrides),
            FreshEarlyStopping(monitor="fid", mode="min", patience=2, noise_aware=True),
            NoiseAwareCheckpoint(dirpath=tmp_path / "kept", monitor="fid", mode="min"),
            ModelCheckpoint(dirpath=tmp_path / "all", save_top_k=-1, filename="{epoch}"),
        ]

    kw = trainer_kwargs(tmp_path / "a", max_epochs=2, enable_checkpointing=True)
    pl.Trainer(callbacks=callbacks(), **kw).fit(TinyGAN(lr=0.2), *loaders())
    resumed = callbacks(**after)
    with pytest.warns(UserWarning, match="starts afresh") as caught:
        pl.Trainer(callbacks=resumed, **trainer_kwargs(tmp_path / "b", max_epochs=4, enable_checkpointing=True)).fit(
            TinyGAN(lr=0.2), *loaders(), ckpt_path=str(tmp_path / "all" / "epoch=1.ckpt")
        )
    afresh = [str(w.message) for w in caught if "starts afresh" in str(w.message)]
    # each anchor once (GenerativeMetrics drops its best on loading a checkpoint of another sample count)
    assert len(afresh) == (3 if "error_bars" in after else 2)
    assert all("10 groups of 23 samples" in m for m in afresh)
    metrics, stopper, kept = resumed[:3]
    assert "fid_vs_best" not in metrics.history[2]  # the first evaluation after the resume: nothing to pair
    assert math.isfinite(metrics.history[3]["fid_vs_best_se"])  # then paired with it again
    groups = after.get("error_bars", 10)
    assert len(stopper._anchor.sizes) == groups and len(kept._anchor.sizes) == groups
