"""Read a statistics ``.pkl`` without letting it run code: a restricted unpickler.

``pickle.load`` calls whatever callable a file names (``os.system``, ``builtins.eval``, any class's
constructor), so a downloaded reference ``.pkl`` could run arbitrary code. EDM2 stores its references
as pickled dicts of numpy arrays (NVlabs/edm2 ``calculate_metrics.py``: ``save_stats`` is
``pickle.dump(stats, f)`` of ``{'num_images': int, 'fid': {'mu', 'sigma'}, 'fd_dinov2': {'mu', 'sigma'}}``,
``load_stats`` is ``pickle.load(f)``). Dicts, lists, tuples, numbers, strings and bytes need no global
at all; a numpy array needs exactly these, which are all this unpickler resolves:

- ``numpy.ndarray`` and ``numpy.dtype``: the array's class and its dtype (protocols 0 to 5);
- ``_reconstruct`` in ``numpy.core.multiarray`` (numpy 1.x) or ``numpy._core.multiarray`` (numpy 2.x):
  ``ndarray.__reduce__`` for protocols up to 4;
- ``_frombuffer`` in ``numpy.core.numeric`` / ``numpy._core.numeric``: ``ndarray.__reduce_ex__(5)``
  (Python 3.14's default protocol) for contiguous arrays;
- ``scalar`` in either ``multiarray``: a numpy scalar such as ``np.float64(2.0)`` or ``np.int64(50)``;
- ``_codecs.encode`` with the ``latin1`` codec only: how protocols 0 to 2 write bytes (array data).

Each resolves to the running numpy's own object, whichever of the two module paths the file names.
Anything else is refused, before it is called, with an error naming the file and the global. Arrays
of Python objects (``dtype=object``) are refused after loading: statistics are numbers.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np


class UnsafePickleError(ValueError):
    """A ``.pkl`` names a global outside the statistics whitelist (it could run code if unpickled)."""


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocols 0-2 use it for bytes: ``encode(text, 'latin1')``, nothing else."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise UnsafePickleError(
            f"refused _codecs.encode with the {encoding!r} codec (only latin1 encodes pickled bytes)"
        )
    return text.encode("latin1", errors)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The whitelist: (module, name) as a file may spell it -> the running numpy's object."""
    reconstruct = np.ndarray((0,)).__reduce__()[0]  # numpy's _reconstruct, wherever this numpy keeps it
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy's _frombuffer (protocol-5 arrays)
    scalar = np.float64(0).__reduce__()[0]  # numpy's scalar
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x spell the same functions differently
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _StatisticsUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose :meth:`find_class` resolves only :func:`_numpy_globals`."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self.source = source
        self.allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise UnsafePickleError(
                f"{self.source}: refused to unpickle the global {module}.{name}: a statistics .pkl may hold only "
                "dicts, lists, tuples, numbers, strings and numpy arrays. This file would run code or build "
                "other objects if unpickled; do not open it with pickle.load. Recompute the statistics "
                "(lightning-fid stats --format edm2) or use a file from a source you trust"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refused a persistent id ({type(pid).__name__}) in a statistics .pkl")


def _check_plain(obj: Any, source: str, where: str = "the file", depth: int = 0) -> None:
    """Refuse what the whitelist still lets through but statistics never hold: object arrays, deep nesting."""
    if depth > 32:
        raise ValueError(f"{source}: {where} is nested more than 32 levels deep; not a statistics file")
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise ValueError(f"{source}: {where} is an array of Python objects (dtype {obj.dtype}); statistics are numbers")
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_plain(value, source, f"{where}[{key!r}]", depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, source, f"{where}[{i}]", depth + 1)


def load_pickle_safely(path: str | os.PathLike) -> Any:
    """The object a statistics ``.pkl`` holds, rebuilt without running any code it names.

    Args:
        path: the ``.pkl`` file.

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the file names a global outside the whitelist (named in the message).
        ValueError: the file is not a pickle, is truncated, or holds arrays of Python objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file not found: {path}")
    with open(path, "rb") as f:
        try:
            obj = _StatisticsUnpickler(f, str(path)).load()
        except UnsafePickleError as exc:  # name the file in every refusal
            raise exc if str(exc).startswith(str(path)) else UnsafePickleError(f"{path}: {exc}") from None
        except Exception as exc:  # truncated, not a pickle, a whitelisted call given bad arguments
            raise ValueError(f"cannot read {path} as a statistics .pkl: {type(exc).__name__}: {exc}") from None
    _check_plain(obj, str(path))
    return obj
