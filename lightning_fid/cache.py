"""On-disk cache of reference statistics, keyed by everything that determines them.

The key hashes the extractor (name and weights fingerprint), its preprocessing, the real data's
fingerprint, the sample count and what is stored; a changed key is a different file, so a stale
file is never read. Files are written atomically by rank 0; unreadable files are recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lightning_fid.stats import _atomic_savez

FORMAT_VERSION = 1


def cache_key(**parts: Any) -> str:
    """Stable SHA-256 of the JSON of ``parts`` (sorted keys)."""
    payload = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class StatsCache:
    """Folder of ``<key>.npz`` files; ``load`` returns None for missing or corrupt files."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"real-{key}.npz"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            if str(arrays.get("key", "")) != key:
                raise ValueError("key mismatch")
            return arrays
        except Exception as exc:  # truncated, corrupt, foreign: never trusted
            warnings.warn(f"ignoring unreadable statistics cache {path} ({exc}); recomputing", stacklevel=2)
            return None

    def save(self, key: str, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
        path = self.path(key)
        _atomic_savez(
            path, {**arrays, "key": np.asarray(key), "metadata": np.asarray(json.dumps(metadata, default=str))}
        )
        return path
