"""Loggers really receive the scalars and the sample grid: read TensorBoard, CSV and W&B files back."""

from __future__ import annotations

import csv
import json
import struct
import time

import lightning.pytorch as pl
import pytest
from helpers.tiny import TinyGAN, loaders, make_callback, trainer_kwargs
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger


def test_tensorboard_receives_scalars_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    cb = make_callback()
    pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=2, logger=logger)).fit(TinyGAN(), *loaders())
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for key in ("fid", "kid", "kid_std", "cmmd", "eval_seconds"):
        assert key in tags["scalars"], key
    fid_values = [e.value for e in events.Scalars("fid")]
    assert fid_values == pytest.approx([h["fid"] for h in cb.history], rel=1e-6)
    assert "samples" in tags["images"]
    image = events.Images("samples")[0]
    assert image.width > 8 and image.height > 8  # a grid of 4 samples


def test_csv_receives_scalars_and_png_grid(tmp_path):
    logger = CSVLogger(tmp_path, name="csv")
    cb = make_callback(prefix="val/")
    pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=2, logger=logger)).fit(TinyGAN(), *loaders())
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/fid")]
    assert [float(r["val/fid"]) for r in rows] == pytest.approx([h["fid"] for h in cb.history], rel=1e-6)
    pngs = sorted((tmp_path / "csv").rglob("val_samples_epoch=*.png"))
    assert [p.name for p in pngs] == [
        "val_samples_epoch=0000-step=00000002.png",
        "val_samples_epoch=0001-step=00000004.png",
    ]


@pytest.mark.slow
def test_wandb_offline_receives_scalars_and_images(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(project="lightning-fid-test", save_dir=str(tmp_path), offline=True)
    cb = make_callback()
    pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=2, logger=logger)).fit(TinyGAN(), *loaders())
    import wandb

    wandb.finish()
    run_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    for _ in range(120):  # wandb's service process may still be writing the offline file after finish()
        history = _wandb_history(next(run_dirs[0].glob("run-*.wandb")))
        fids = [float(h["fid"]) for h in history if "fid" in h]
        if len(fids) == len(cb.history):
            break
        time.sleep(0.5)
    assert fids == pytest.approx([h["fid"] for h in cb.history], rel=1e-6)
    assert any("cmmd" in h for h in history) and any("kid" in h for h in history)
    logged_images = [json.loads(h["samples/filenames"])[0] for h in history if "samples/filenames" in h]
    assert len(logged_images) == 2
    assert all((run_dirs[0] / "files" / name).is_file() for name in logged_images)


def _wandb_history(path):
    """History rows of an offline .wandb file: a LevelDB-style log of wandb protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7])[0] == b":W&B"
    pos, block, buf, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL/FIRST start a record, MIDDLE/LAST extend it
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): i.value_json for i in record.history.item})
    return rows
