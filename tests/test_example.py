"""examples/digits_gan.py --fast: trains, logs metrics and grids, and FID falls."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_digits_gan_fast(tmp_path, capsys):
    example = runpy.run_path(str(ROOT / "examples" / "digits_gan.py"), run_name="example")
    result = example["main"](["--fast", "--out", str(tmp_path / "run")])
    history = result["history"]
    assert len(history) >= 3
    for row in history:
        assert {"fid", "kid", "kid_std", "mmd", "precision", "recall", "density", "coverage", "eval_seconds"} <= set(
            row
        )
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1 and 0 <= row["coverage"] <= 1
    assert history[-1]["fid"] < history[0]["fid"]
    assert min(r["fid"] for r in history) < 0.5 * history[0]["fid"]  # clearly, not marginally
    assert max(r["recall"] for r in history) > history[0]["recall"] or history[0]["recall"] > 0.5
    assert Path(result["best_checkpoint"]).is_file()
    events = list(Path(result["log_dir"]).glob("events.out.tfevents.*"))
    assert events
    out = capsys.readouterr().out
    assert "epoch" in out and "mmd" in out and "best checkpoint" in out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(result["log_dir"], size_guidance={"images": 0})
    acc.Reload()
    assert {"fid", "kid", "mmd"} <= set(acc.Tags()["scalars"]) and "samples" in acc.Tags()["images"]
    assert (tmp_path / "run" / "digits_encoder.pt").is_file()  # cached for the next run
