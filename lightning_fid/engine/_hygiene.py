"""Evaluation leaves no trace on training and takes none from it: RNG states and numeric precision.

- :func:`preserved_rng`: the dry run, the reference pass and every evaluation leave Python's,
  numpy's and torch's (CPU and every CUDA device's) random states exactly as they found them, so a
  run whose reference statistics come from the cache trains identically to one that computed them.
- :func:`full_precision`: feature extraction and metric math run in IEEE float32 / float64 whatever
  the user enabled for training speed: autocast off, TF32 and reduced-precision float32 matmul /
  convolution off (cuBLAS, cuDNN, oneDNN), everything restored afterwards.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np
import torch


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore Python, numpy and torch (CPU, CUDA) random states on exit, even after an error."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _precision_flags() -> list[tuple[object, str]]:
    """torch's float32 precision switches (the fp32_precision API of torch >= 2.9)."""
    backends = torch.backends
    owners = [
        backends,
        backends.cuda.matmul,
        backends.cudnn,
        backends.cudnn.conv,
        backends.cudnn.rnn,
        backends.mkldnn,
        backends.mkldnn.matmul,
        backends.mkldnn.conv,
        backends.mkldnn.rnn,
    ]
    return [(owner, "fp32_precision") for owner in owners if hasattr(owner, "fp32_precision")]


@contextmanager
def _ieee_float32() -> Iterator[None]:
    flags = _precision_flags()
    if flags:  # the new API; mixing it with the legacy one is an error in torch >= 2.9
        saved = [getattr(owner, name) for owner, name in flags]
        try:
            for owner, name in flags:
                setattr(owner, name, "ieee")
            yield
        finally:
            for (owner, name), value in zip(flags, saved):
                setattr(owner, name, value)
        return
    saved_legacy = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved_legacy[0]
        torch.backends.cudnn.allow_tf32 = saved_legacy[1]
        torch.set_float32_matmul_precision(saved_legacy[2])


@contextmanager
def full_precision() -> Iterator[None]:
    """Autocast disabled on every device type and IEEE float32 arithmetic, restored on exit."""
    with ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", enabled=False))
        stack.enter_context(_ieee_float32())
        yield


def is_full_precision() -> bool:
    """True when no autocast is active and float32 arithmetic is IEEE (for tests and assertions)."""
    if torch.is_autocast_enabled("cpu") or (torch.cuda.is_available() and torch.is_autocast_enabled("cuda")):
        return False
    flags = _precision_flags()
    if flags:
        return all(getattr(owner, name) == "ieee" for owner, name in flags)
    return not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


@contextmanager
def sampling_precision(dtype: torch.dtype | None, device: torch.device) -> Iterator[None]:
    """The generator runs in full precision, or under autocast to ``dtype`` when the user opted in."""
    if dtype is None:
        with full_precision():
            yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield
