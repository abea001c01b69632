"""On-disk cache of reference statistics, keyed by everything that determines them.

The key hashes the extractor (name and weights fingerprint), its preprocessing, the real data's
fingerprint, the sample count and what is stored; a changed key is a different file, so a stale
file is never read. Files are written atomically; unreadable files are recomputed.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lightning_fid.engine._files import atomic_write
from lightning_fid.engine._stats import Statistics

FORMAT_VERSION = 2  # 2: Statistics arrays (n absent when unknown) plus the key


def stable_identity(obj: Any) -> str | None:
    """A description of ``obj`` that is the same in every run, or None when there is none: lambdas,
    closures and objects whose repr is their memory address cannot be told apart from a changed one."""
    if obj is None:
        return "None"
    if isinstance(obj, functools.partial):
        inner = stable_identity(obj.func)
        parts = repr((obj.args, sorted(obj.keywords.items())))
        return None if inner is None or " at 0x" in parts else f"partial({inner}, {parts})"
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj):
        name = getattr(obj, "__qualname__", "")
        if "<lambda>" in name or "<locals>" in name:
            return None
        return f"{getattr(obj, '__module__', '')}.{name}"
    text = repr(obj)
    if " at 0x" in text:
        return None
    return f"{type(obj).__module__}.{type(obj).__qualname__}:{text}"


def cache_key(**parts: Any) -> str:
    """Stable SHA-256 of the JSON of ``parts`` (sorted keys)."""
    payload = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class StatsCache:
    """Folder of ``real-<key>.npz`` files; ``load`` returns None for missing or corrupt files."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """Where the entry for ``key`` lives."""
        return self.root / f"real-{key}.npz"

    def load(self, key: str) -> Statistics | None:
        """The cached statistics for ``key``, or None (missing, truncated, corrupt or foreign file)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            if str(arrays.pop("key", "")) != key:
                raise ValueError("key mismatch")
            return Statistics.from_arrays(arrays, source=str(path))
        except Exception as exc:  # truncated, corrupt, foreign: never trusted
            warnings.warn(f"ignoring unreadable statistics cache {path} ({exc}); recomputing", stacklevel=2)
            return None

    def save(self, key: str, stats: Statistics) -> Path:
        """Write ``stats`` under ``key`` atomically."""
        path = self.path(key)
        with atomic_write(path, suffix=".npz") as tmp:
            np.savez(tmp, **stats.to_arrays(), key=np.asarray(key))
        return path
