"""The few array operations the block code needs, for numpy (CPU) and torch (accelerators) alike."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import torch


def full(xp: ModuleType, shape: tuple[int, ...], value: float, like: Any, dtype: str = "float64") -> Any:
    """A new array filled with ``value`` (dtype "float64" or "int64") on ``like``'s device."""
    if xp is np:
        return np.full(shape, value, dtype=dtype)
    return torch.full(shape, value, dtype=getattr(torch, dtype), device=like.device)


def concat(xp: ModuleType, parts: list[Any], axis: int = 0) -> Any:
    return np.concatenate(parts, axis=axis) if xp is np else torch.cat(parts, dim=axis)


def nonzero(xp: ModuleType, mask: Any) -> tuple[Any, Any]:
    """Row and column indices of a 2-D mask's True entries, in row-major order (numpy: through the
    flat indices, 15x faster than np.nonzero on a sparse C-ordered mask)."""
    if xp is not np:
        return torch.nonzero(mask, as_tuple=True)
    flat = np.flatnonzero(mask) if mask.any() else np.zeros(0, dtype=np.int64)
    return np.divmod(flat, mask.shape[1])


def argsort(xp: ModuleType, v: Any) -> Any:
    """Stable ascending order of a 1-D array."""
    return np.argsort(v, kind="stable") if xp is np else torch.sort(v, stable=True).indices


def smallest(xp: ModuleType, v: Any, m: int) -> Any:
    """The ``m`` smallest values of each row, in no particular order."""
    if xp is np:
        return np.partition(v, m - 1, axis=1)[:, :m]
    return torch.topk(v, m, dim=1, largest=False, sorted=False).values


def kth(xp: ModuleType, v: Any, k: int) -> Any:
    """The (k+1)-th smallest value of each row (k counts from 0)."""
    if xp is np:
        return np.partition(v, k, axis=1)[:, k]
    return torch.kthvalue(v, k + 1, dim=1).values


def sort_rows(xp: ModuleType, key: Any) -> Any:
    """Per row, the column order that sorts ``key`` ascending (stable)."""
    return np.argsort(key, axis=1, kind="stable") if xp is np else torch.sort(key, dim=1, stable=True).indices


def take_rows(xp: ModuleType, v: Any, order: Any) -> Any:
    return np.take_along_axis(v, order, axis=1) if xp is np else torch.gather(v, 1, order)


def count(xp: ModuleType, mask: Any, axis: int) -> Any:
    """True entries per row (axis=1) or per column (axis=0), as float64."""
    if xp is np:
        return np.count_nonzero(mask, axis=axis).astype(np.float64)
    return mask.sum(dim=axis, dtype=torch.float64)


def total(xp: ModuleType, mask: Any) -> int:
    """Number of True entries."""
    return int(np.count_nonzero(mask)) if xp is np else int(mask.sum())


def bincount(xp: ModuleType, index: Any, length: int) -> Any:
    if xp is np:
        return np.bincount(index, minlength=length)
    return torch.bincount(index, minlength=length)


def arange(xp: ModuleType, n: int, like: Any) -> Any:
    return np.arange(n) if xp is np else torch.arange(n, device=like.device)


def cumsum(xp: ModuleType, v: Any) -> Any:
    return np.cumsum(v) if xp is np else torch.cumsum(v, dim=0)


def to64(xp: ModuleType, v: Any) -> Any:
    return np.asarray(v, dtype=np.float64) if xp is np else v.to(torch.float64)


def as_dtype(xp: ModuleType, v: Any, like: Any, direction: float) -> Any:
    """float64 thresholds ``v`` in ``like``'s dtype, rounded toward ``direction`` (+inf or -inf) when
    that dtype is narrower, so a comparison in it is never less strict than in float64."""
    if xp is np:
        out = v.astype(like.dtype)
        if out.dtype != np.float64:
            out = np.where(out.astype(np.float64) == v, out, np.nextafter(out, np.asarray(direction, dtype=out.dtype)))
        return out
    out = v.to(like.dtype)
    if out.dtype != torch.float64:
        step = torch.nextafter(out, torch.full_like(out, direction))
        out = torch.where(out.to(torch.float64) == v, out, step)
    return out


def sqrt(v: Any) -> Any:
    """Correctly rounded float64 square roots: numpy's, also for CPU tensors (torch's CPU sqrt is off by
    one unit in the last place for ~1% of float64 inputs); CUDA's sqrt is correctly rounded."""
    if isinstance(v, np.ndarray):
        return np.sqrt(v)
    if v.device.type == "cpu":
        return torch.from_numpy(np.sqrt(v.numpy()))
    return v.sqrt()


def to_torch(xp: ModuleType, v: Any) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(v)) if xp is np else v
