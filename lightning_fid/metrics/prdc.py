"""k-NN manifold metrics: precision / recall (Kynkaenniemi et al. 2019), density / coverage (Naeem et al. 2020).

Each sample set's manifold is a union of balls: sample i's ball has the radius to its k-th nearest
*other* sample of the same set (prdc's and torch-fidelity's "(k+1)-th smallest distance, self
included"). The references build full N x N distance matrices (50k samples: 20 GB in float64); here
nothing larger than ``block_size`` x ``block_size`` is ever held:

- radii: block pairs (i, j >= i) of the set against itself, each block used for both its rows and its
  columns, keeping per row the k+1 smallest distances and the candidates that could still be among them;
- ball tests: blocks of generated rows against real columns, counting per sample how many balls
  contain it.

Exact at float32 speed. Every decision (which neighbour is the k-th, whether a sample lies in a ball)
and every radius is that of the exact float64 squared distance |a|^2 + |b|^2 - 2 a.b: products in
float64, summed in one fixed pairwise order (``_blocks.exact_dots``), so it depends on the two vectors
only (0 for a sample and its duplicate; the same on any device, block size or thread count, which a
BLAS float64 product is not: its last bit moves with the matrix shape). Blocks are *screened* with
float32 matrix products (TF32 off on GPUs) under a rigorous per-entry error bound (``_screen``, where
the bound is derived), and only entries whose decision could change within the bound are computed
exactly: typically the k-th neighbour of each sample and a few pairs near a ball's boundary.
``products="float64"`` screens with float64 products instead: the same values, bit for bit, at float64
speed (half of float32's on CPUs; 1/32 to 1/64 on GeForce GPUs, by their specifications). Features
float32 cannot bound safely (squared norms above 2^80) and blocks with too many undecided entries
(huge norms with tiny differences, heavy ties) are screened in float64 automatically. With ``distributed`` (identical features on every rank), block
pairs are dealt round-robin, counts summed with one all-reduce, partial candidate lists merged after
one all-gather: results are bit-identical for any number of processes and any ``block_size``.

Comparisons: precision / recall use ``<=`` (Kynkaenniemi et al.'s code, StyleGAN2-ADA, torch-fidelity);
density / coverage and :func:`precision_recall_density_coverage` use ``<`` (the ``prdc`` package).
They differ only for exact ties.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lightning_fid.engine._distributed import Group
from lightning_fid.engine._validation import ArrayLike, as_features, as_tensor, check_same_dim
from lightning_fid.metrics import _xp as X
from lightning_fid.metrics._balls import ball_counts
from lightning_fid.metrics._blocks import DEFAULT_BLOCK_SIZE, Features
from lightning_fid.metrics._knn import squared_radii
from lightning_fid.metrics._screen import check_products

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "density_coverage",
    "knn_radii",
    "precision_recall",
    "precision_recall_density_coverage",
]


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _options(k: int, block_size: int, distributed: bool, group: Group, products: str) -> tuple[int, dict[str, Any]]:
    k = _check_int(k, "k", 1)
    block_size = _check_int(block_size, "block_size", 1)
    opts = {"block_size": block_size, "distributed": distributed, "group": group, "products": check_products(products)}
    return k, opts


def _radii_of(x: Features, k: int, opts: dict[str, Any]) -> torch.Tensor:
    return X.sqrt(squared_radii(x, k, **opts))


def knn_radii(
    features: ArrayLike,
    k: int,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    distributed: bool = False,
    group: Group = None,
    products: str = "float32",
) -> torch.Tensor:
    """Distance of each sample to its k-th nearest other sample (float64, on the features' device).

    Equal to prdc's ``compute_nearest_neighbour_distances`` and to torch-fidelity's
    ``kthvalue(k + 1)`` radii, without an N x N matrix. Duplicated samples count as neighbours (at
    distance exactly 0). Compute the real set's radii once per run and pass them as ``real_radii=``
    to :func:`precision_recall` / :func:`density_coverage`.

    Args:
        features: (N, D) features, N > k.
        k: the neighbour whose distance is the radius (k >= 1).
        block_size: rows per block; memory is O(block_size^2), the result does not depend on it.
        distributed: split the block pairs over the ranks of ``group`` (identical features on each).
        group: the process group (None: the default group).
        products: ``"float32"`` (screen with float32 products, the default) or ``"float64"``: the
            same result, bit for bit; only the time differs.

    Raises:
        ValueError: bad ``k`` / ``block_size`` / ``products``, too few samples or non-finite features.
    """
    k, opts = _options(k, block_size, distributed, group, products)
    x = as_features(features, "features", min_samples=k + 1)
    return _radii_of(Features(x, opts["block_size"]), k, opts)


def _given_radii(radii: ArrayLike, n: int, device: torch.device) -> torch.Tensor:
    r = as_tensor(radii, "real_radii")
    if r.ndim != 1 or r.shape[0] != n:
        raise ValueError(f"real_radii must have shape ({n},) (one radius per sample), got {tuple(r.shape)}")
    if not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
        raise ValueError("real_radii must hold finite, non-negative distances")
    return r.to(device=device, dtype=torch.float64)


def _prepare(
    real: ArrayLike, fake: ArrayLike, k: int, given: ArrayLike | None, fake_balls: bool, opts: tuple[Any, ...]
) -> tuple[Features, Features, torch.Tensor, int, dict[str, Any]]:
    """Checked features (as Features), the real radii (given or computed), k and the options."""
    k, options = _options(k, *opts)
    x = as_features(real, "real_features", min_samples=k + 1)
    y = as_features(fake, "fake_features", min_samples=1)
    check_same_dim(x, y, "real_features", "fake_features")
    if fake_balls and y.shape[0] < k + 1:
        raise ValueError(f"fake_features needs at least k + 1 = {k + 1} samples for recall, got {y.shape[0]}")
    r, f = Features(x, options["block_size"]), Features(y.to(x.device), options["block_size"])
    rr = _radii_of(r, k, options) if given is None else _given_radii(given, x.shape[0], x.device)
    return r, f, rr, k, options


def precision_recall(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    k: int = 3,
    *,
    real_radii: ArrayLike | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    distributed: bool = False,
    group: Group = None,
    products: str = "float32",
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019), k = 3 as in the paper.

    Precision: fraction of generated samples inside at least one real ball; recall: fraction of real
    samples inside at least one generated ball (``<=``, as torch-fidelity's ``prc`` and StyleGAN2-ADA).

    Args:
        real_features: (N, D) real features, N > k.
        fake_features: (M, D) generated features, M > k.
        k: the neighbour whose distance sets each ball's radius.
        real_radii: :func:`knn_radii` of the real features with the same ``k`` (computed if None).
        block_size: rows per block; memory is O(block_size^2), the result does not depend on it.
        distributed: split the block pairs over the ranks of ``group`` (identical features on each).
        group: the process group (None: the default group).
        products: ``"float32"`` (default) or ``"float64"`` screening products: the same result.

    Raises:
        ValueError: bad options or ``real_radii``, too few samples, non-finite features or
            different feature dimensions.
    """
    r, f, rr, k, opts = _prepare(
        real_features, fake_features, k, real_radii, True, (block_size, distributed, group, products)
    )
    fake_hits, _, real_in_fake = ball_counts(r, f, rr, _radii_of(f, k, opts), False, False, opts)
    return float((fake_hits > 0).double().mean()), float((real_in_fake > 0).double().mean())


def density_coverage(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    k: int = 5,
    *,
    real_radii: ArrayLike | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    distributed: bool = False,
    group: Group = None,
    products: str = "float32",
) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020), k = 5 as in the ``prdc`` package.

    Density = (1 / kM) sum_j #{real balls containing fake j} (may exceed 1); coverage = fraction of
    real balls containing at least one generated sample (strict ``<``). Only real balls are used, so
    outliers among generated samples do not inflate either.

    Args:
        real_features: (N, D) real features, N > k.
        fake_features: (M, D) generated features, M >= 1.
        k: the neighbour whose distance sets each real ball's radius.
        real_radii: :func:`knn_radii` of the real features with the same ``k`` (computed if None).
        block_size: rows per block; memory is O(block_size^2), the result does not depend on it.
        distributed: split the block pairs over the ranks of ``group`` (identical features on each).
        group: the process group (None: the default group).
        products: ``"float32"`` (default) or ``"float64"`` screening products: the same result.

    Raises:
        ValueError: bad options or ``real_radii``, too few samples, non-finite features or
            different feature dimensions.
    """
    r, f, rr, k, opts = _prepare(
        real_features, fake_features, k, real_radii, False, (block_size, distributed, group, products)
    )
    fake_hits, real_hits, _ = ball_counts(r, f, rr, None, True, True, opts)
    return float(fake_hits.sum()) / (k * f.n), float((real_hits > 0).double().mean())


def precision_recall_density_coverage(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    k: int = 5,
    *,
    real_radii: ArrayLike | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    distributed: bool = False,
    group: Group = None,
    products: str = "float32",
) -> dict[str, float]:
    """All four metrics exactly as the ``prdc`` package's ``compute_prdc`` (one k, strict ``<``), from
    one pass over the generated-vs-real distances: {"precision", "recall", "density", "coverage"}.

    Args:
        real_features: (N, D) real features, N > k.
        fake_features: (M, D) generated features, M > k.
        k: the neighbour whose distance sets each ball's radius.
        real_radii: :func:`knn_radii` of the real features with the same ``k`` (computed if None).
        block_size: rows per block; memory is O(block_size^2), the result does not depend on it.
        distributed: split the block pairs over the ranks of ``group`` (identical features on each).
        group: the process group (None: the default group).
        products: ``"float32"`` (default) or ``"float64"`` screening products: the same result.

    Raises:
        ValueError: bad options or ``real_radii``, too few samples, non-finite features or
            different feature dimensions.
    """
    r, f, rr, k, opts = _prepare(
        real_features, fake_features, k, real_radii, True, (block_size, distributed, group, products)
    )
    fake_hits, real_hits, real_in_fake = ball_counts(r, f, rr, _radii_of(f, k, opts), True, True, opts)
    return {
        "precision": float((fake_hits > 0).double().mean()),
        "recall": float((real_in_fake > 0).double().mean()),
        "density": float(fake_hits.sum()) / (k * f.n),
        "coverage": float((real_hits > 0).double().mean()),
    }
