"""Blocks of squared distances from fast matrix products, each entry with a rigorous error bound.

Every k-NN decision (which neighbour is the k-th, whether a sample lies in a ball) is defined by the
exact float64 distance of :func:`exact_sq` (products in float64, one fixed summation order: see
``_blocks``). A block is first *screened*: half squared distances h = (|a|^2 + |b|^2)/2 - a.b from one
matrix product, in float32 (TF32 off) or, where float32 cannot be bounded safely, in float64. Only
entries whose decision could change within the bound below are recomputed exactly, so the results
are those of the exact values, whichever screen ran.

The bound. Write S = (|a|^2 + |b|^2) / 2 (so |a||b| <= S and the true distance D <= 4 S), d the
dimension, u the screen's unit roundoff (2^-24 in float32, 2^-53 in float64), u64 = 2^-53 and
gamma_n(u) = n u / (1 - n u). The screen computes fl(fl(fl(a'.b') - fl(|a|^2/2)) - fl(|b|^2/2)) with
a' = a rounded to the screen's precision and the norms from :func:`exact_sq`'s arithmetic:

- the product of length d, summed in any order (BLAS or GPU): |fl(a'.b') - a'.b'| <= gamma_d(u)
  sum |a'_i b'_i| <= gamma_d(u) (1 + u)^2 |a||b| (Higham, Accuracy and Stability, Sec. 3.1);
- the rounding of float64 features to float32: |a'.b' - a.b| <= (2u + u^2) S (exact, hence 0, for
  float32 / float16 / bfloat16 features: the bound keeps the term anyway);
- the norms: exact_sq's sums carry at most gamma_d(u64) |a|^2, then one rounding to the screen's
  precision each (u |a|^2 / 2);
- the two subtractions: each operand is at most ~2 S, so each rounding is at most 2.01 u S;
- the exact value itself differs from the true half distance by at most (2 gamma_d(u64) + 3 u64) S.

Altogether |screened h - exact D / 2| <= kappa S + eta with kappa = 1.01 (gamma_d(u) (1 + 2u) + 8u +
3.1 gamma_d(u64) + 4.1 u64) (the factor 1.01 absorbs second-order terms and the rounding of S
itself) and eta = d 2^-100, which covers underflow (products below float32's normal range lose at
most 2^-149 each) when every |feature| <= 2^40. For d = 2048 in float32, kappa = 1.23e-4.

Where this cannot hold the screen is float64: features whose squared norm exceeds 2^80 (float32
products could overflow), or d so large that kappa > 1e-2. A float32 block with too many undecided
entries (large norms with small differences, heavy exact ties) is screened again in float64, and so
is every later block of the same call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lightning_fid.metrics._blocks import Features, exact_dots
from lightning_fid.metrics._xp import to64

U32, U64 = 2.0**-24, 2.0**-53
#: relative slack between a squared radius and a decision: covers the rounding of sqrt and of r^2
SLACK = 1e-12
MAX_SQ = 2.0**80
PRODUCTS = ("float32", "float64")


def kappa(dim: int, unit: float) -> float:
    """The relative error bound (see the module docstring) of a screen with unit roundoff ``unit``."""
    g = dim * unit / (1.0 - dim * unit) if dim * unit < 0.5 else float("inf")
    g64 = dim * U64 / (1.0 - dim * U64)
    return 1.01 * (g * (1.0 + 2.0 * unit) + 8.0 * unit + 3.1 * g64 + 4.1 * U64)


def check_products(products: str) -> str:
    if products not in PRODUCTS:
        raise ValueError(f"products must be one of {PRODUCTS}, got {products!r}")
    return products


def exact_sq(a: Features, p: Any, b: Features, q: Any) -> Any:
    """Exact squared distances |a_p - b_q|^2 = max((|a_p|^2 + |b_q|^2) - 2 a_p.b_q, 0), float64.

    The value every decision is defined by: symmetric, 0 for identical vectors, and the same on any
    device, block size or thread count (see ``_blocks.exact_dots``)."""
    v = exact_dots(a, p, b, q)
    v *= -2.0
    v += a.sq[p] + b.sq[q]
    return v.clip(min=0.0) if a.xp is np else v.clamp_(min=0.0)


class Screen:
    """How one call screens its blocks (float32 while it can, float64 otherwise) and their bounds."""

    def __init__(self, a: Features, b: Features, products: str) -> None:
        self.xp = a.xp
        self.float32 = (
            check_products(products) == "float32" and max(a.max_sq, b.max_sq) <= MAX_SQ and kappa(a.dim, U32) <= 1e-2
        )
        self.kappas = {True: kappa(a.dim, U32), False: kappa(a.dim, U64)}
        self.eta = a.dim * 2.0**-100
        self._half: dict[tuple[int, bool], Any] = {}

    @property
    def kappa(self) -> float:
        return self.kappas[self.float32]

    def fall_back(self) -> None:
        """Screen this and every later block of the call in float64."""
        self.float32 = False

    def _halves(self, x: Features) -> Any:
        key = (id(x), self.float32)
        if key not in self._half:
            half = x.sq * 0.5
            if self.float32:
                half = half.astype(np.float32) if self.xp is np else half.to(torch.float32)
            self._half[key] = half
        return self._half[key]

    def block(self, a: Features, rows: slice, b: Features, cols: slice, same: bool) -> Any:
        """-h for rows x cols (``same``: the diagonal block of a set against itself), in the screen's
        precision: a.b - |a|^2/2 - |b|^2/2, i.e. minus half the squared distance."""
        x = a.block32(rows) if self.float32 else a.block64(rows)
        y = x if same else (b.block32(cols) if self.float32 else b.block64(cols))
        g = x @ y.T  # x @ x.T is a BLAS syrk in numpy
        g -= self._halves(a)[rows][:, None]
        g -= self._halves(b)[cols][None, :]
        return g

    def half_width(self, sq_rows: Any, sq_cols_max: float) -> Any:
        """Per row: the bound on |screened h - exact D / 2| against any column of a block whose
        largest squared norm is ``sq_cols_max``."""
        return to64(self.xp, sq_rows) * (0.5 * self.kappa) + (0.5 * self.kappa * sq_cols_max + self.eta)
