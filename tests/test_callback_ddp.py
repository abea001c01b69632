"""ddp_spawn with 2 processes (gloo): the logged metrics equal the single-process values."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
from lightning_helpers import TinyGAN, loaders, make_callback, trainer_kwargs

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


class DumpHistory(pl.Callback):
    """Each rank writes the float64 history of the metrics callback (spawned copies live elsewhere)."""

    def __init__(self, metrics_cb, folder):
        self.metrics_cb, self.folder = metrics_cb, str(folder)

    def on_fit_end(self, trainer, pl_module):
        with open(f"{self.folder}/history-rank{trainer.global_rank}.json", "w") as f:
            json.dump(self.metrics_cb.history, f)


def _run(tmp_path, devices, strategy):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cb = make_callback(kid_subsets=6, log_images=0)
    trainer = pl.Trainer(
        callbacks=[cb, DumpHistory(cb, tmp_path)],
        **trainer_kwargs(tmp_path, max_epochs=2, devices=devices, strategy=strategy),
    )
    trainer.fit(TinyGAN(lr=0.0, bn_momentum=0.0), *loaders())  # the same generator whatever the world size
    histories = [json.loads((tmp_path / f"history-rank{r}.json").read_text()) for r in range(devices)]
    return histories, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_two_processes_equal_one(tmp_path):
    (single,), single_logged = _run(tmp_path / "one", 1, "auto")
    (rank0, rank1), ddp_logged = _run(tmp_path / "two", 2, "ddp_spawn")
    assert len(single) == len(rank0) == 2
    for key in ("fid", "kid", "kid_std", "cmmd"):
        for a, b, c in zip(single, rank0, rank1):
            assert b[key] == pytest.approx(a[key], rel=1e-9), key
            assert c[key] == b[key], key  # the same value on every rank
        assert ddp_logged[key] == pytest.approx(single_logged[key], rel=1e-6), key  # float32 in callback_metrics
    assert single[0]["fid"] > 0.01
