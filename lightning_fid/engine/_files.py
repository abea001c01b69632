"""The one way this package writes files: atomically, with the permissions the user's umask gives.

Statistics, cache entries, sample PNGs and downloaded weights all go through :func:`atomic_write`:
the data is written to a temporary file in the target folder and renamed over the target, so a
reader (another rank, another job on a shared cluster) never sees half a file. ``mkstemp`` creates
files readable by their owner only; we widen that to what ``open()`` would have given (``0o666``
less the umask), so a folder shared by a team stays usable by every member.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process umask (read without changing it where the OS allows)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # portable fallback: set and restore
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename.

    The folder is created if needed. On error the temporary file is removed and ``path`` is left
    as it was. ``suffix`` lets writers that pick a format from the file name (PIL, numpy) see it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
