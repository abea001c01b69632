"""Input checks shared by every metric: convert arrays to tensors and fail with clear messages."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences


def as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """Return ``x`` as a floating tensor on its own device (numpy arrays become CPU tensors)."""
    if not isinstance(x, torch.Tensor):
        array = np.asarray(x)
        if array.dtype.kind not in "biuf":  # strings, objects, complex: no torch conversion to try
            raise ValueError(f"{name} must hold real numbers, got numpy dtype {array.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(array))
    if x.dtype == torch.bool or x.is_complex() or not (x.is_floating_point() or _is_integer(x.dtype)):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if not x.is_floating_point():
        x = x.to(torch.float64)  # every integer type is exact in float64 up to 2**53
    return x


def _is_integer(dtype: torch.dtype) -> bool:
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ValueError naming ``name`` if ``x`` holds NaN or inf."""
    if bool(torch.isfinite(x.sum())):  # one pass, no allocation: NaN/inf anywhere make the sum non-finite
        return
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); metrics need finite inputs")


def as_features(x: ArrayLike, name: str, min_samples: int = 2) -> torch.Tensor:
    """Validate a (N, D) feature matrix: 2-D, at least ``min_samples`` rows, finite."""
    t = as_tensor(x, name)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (num_samples, num_features) array, got shape {tuple(t.shape)}")
    if t.shape[0] < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} samples, got {t.shape[0]}")
    if t.shape[1] < 1:
        raise ValueError(f"{name} has no feature dimension: shape {tuple(t.shape)}")
    check_finite(t, name)
    return t


def check_same_dim(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Raise if the feature dimensions of two matrices differ."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"feature dimension mismatch: {name_a} has {a.shape[-1]} features, {name_b} has {b.shape[-1]}; "
            "both sets must come from the same feature extractor"
        )
