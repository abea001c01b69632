"""Every file we write is atomic and gets ordinary permissions under the user's umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightning_fid.callbacks._reporting import log_grid
from lightning_fid.engine._accumulators import FeatureMoments
from lightning_fid.engine._cache import StatsCache
from lightning_fid.engine._files import atomic_write, current_umask
from lightning_fid.engine._images import image_grid


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_follow_the_umask(tmp_path, umask_002):
    assert current_umask() == 0o002
    FeatureMoments(3).update(np.random.default_rng(0).random((5, 3))).save(tmp_path / "stats" / "ref.npz")
    cache_path = StatsCache(tmp_path / "cache").save("k", FeatureMoments(3).update(np.eye(3)).statistics())
    no_loggers = SimpleNamespace(loggers=[], default_root_dir=str(tmp_path / "png"))
    (png,) = log_grid(no_loggers, image_grid(torch.zeros(2, 3, 4, 4, dtype=torch.uint8)), "samples", 0, 0)
    for path in (tmp_path / "stats" / "ref.npz", cache_path, Path(png)):
        assert _mode(path) == 0o664, path  # group-writable for a team folder, as open() would make it


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["file.bin"]
    with atomic_write(target, suffix=".pt") as tmp:
        assert tmp.suffix == ".pt" and tmp.parent == tmp_path
        torch.save({"a": 1}, tmp)
    assert torch.load(target) == {"a": 1} and os.listdir(tmp_path) == ["file.bin"]
