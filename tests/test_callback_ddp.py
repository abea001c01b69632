"""ddp_spawn with 2 processes (gloo): the logged metrics equal the single-process values, for epoch and
step schedules, conditions and EMA weights; the history comes back to the launching process."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from helpers.tiny import TinyGAN, loaders, make_callback, real_images, standard_metrics, trainer_kwargs
from lightning.pytorch.callbacks import WeightAveraging

from lightning_fid import RealData

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def conditional_sample(module, batch_size, generator, index, conditions):
    assert torch.equal(conditions, index % 3)  # sample i gets condition i on every rank
    return module.sample_images(batch_size, generator) * (0.6 + 0.1 * conditions.view(-1, 1, 1, 1))


def per_class_sample(module, batch_size, generator, conditions):
    return module.sample_images(batch_size, generator) * (0.5 + 0.2 * conditions.view(-1, 1, 1, 1))


def ema(averaged, current, num_averaged):
    """EMA with decay 0.5. (EMAWeightAveraging's own update function is a closure, which ddp_spawn
    cannot pickle: a Lightning limitation, so this test builds the same average from WeightAveraging.)"""
    return 0.5 * averaged + 0.5 * current


CONFIGS = {
    "epochs": dict(callback={}, extra=list, model={"lr": 0.0, "bn_momentum": 0.0}),
    "breadth": dict(
        callback={
            "metrics": (*standard_metrics(kid_subsets=6), "precision", "recall", "density", "coverage", "fid_inf")
        },
        extra=list,
        model={"lr": 0.0, "bn_momentum": 0.0},
    ),
    "per_class": dict(
        callback={
            "metrics": ("fid", "fid_per_class", "intra_fid"),
            "sample_fn": per_class_sample,
            "conditions": torch.arange(23) % 3,
            "real": RealData(torch.utils.data.TensorDataset(real_images(37), torch.arange(37) % 3), label_key=1),
        },
        extra=list,
        model={"lr": 0.0, "bn_momentum": 0.0},
    ),
    "steps_conditions_ema": dict(
        callback={
            "every_n_steps": 2,
            "weights": "both",
            "final_num_samples": 30,
            "sample_fn": conditional_sample,
            "conditions": torch.arange(30) % 3,
        },
        extra=lambda: [WeightAveraging(avg_fn=ema)],
        model={"lr": 0.1},
        same_batches=True,
    ),
}


def _run(tmp_path, devices, strategy, config):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cb = make_callback(log_images=0, **{"metrics": standard_metrics(kid_subsets=6), **config["callback"]})
    trainer = pl.Trainer(
        callbacks=[cb, *config["extra"]()],  # fresh callbacks for every run
        **trainer_kwargs(tmp_path, max_epochs=2, devices=devices, strategy=strategy),
    )
    train, val = loaders()
    if config.get("same_batches"):  # identical samples: every rank's gradient equals the single process's
        image = train.dataset[0][0]
        train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(image.expand(37, -1, -1, -1)), batch_size=8)
    trainer.fit(TinyGAN(**config["model"]), train, val)  # the same generator whatever the world size
    return cb, {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_two_processes_equal_one(tmp_path, name):
    config = CONFIGS[name]
    single, single_logged = _run(tmp_path / "one", 1, "auto", config)
    spawned, ddp_logged = _run(tmp_path / "two", 2, "ddp_spawn", config)
    assert len(single.history) == len(spawned.history) == 2  # read back in this (launching) process
    keys = [k for k in single.history[0] if k not in ("eval_seconds", "epoch", "step")]
    assert {"fid"} <= set(keys) and len(keys) >= 3
    for a, b in zip(single.history, spawned.history):
        assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-9), key
    for key in [k for k in ("fid", "kid", "cmmd", "intra_fid") if k in single_logged]:
        assert ddp_logged[key] == pytest.approx(single_logged[key], rel=1e-6), key  # float32 in callback_metrics
    assert single.history[0]["fid"] > 0.01
    assert set(spawned.final_metrics) == set(single.final_metrics)
    for key, value in single.final_metrics.items():
        assert spawned.final_metrics[key] == pytest.approx(value, rel=1e-9), key
