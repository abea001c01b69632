"""Standalone metric objects in the torchmetrics style: update / compute / reset in any loop.

They build on ``torchmetrics.Metric`` for state handling, device moves and Fabric/Lightning
integration, with two changes where its defaults fall short for these metrics:
- FID's d x d moment states are summed with ONE packed all-reduce (torchmetrics' default sync
  all-gathers every rank's copy of every state, i.e. world_size x 32 MB per 2048-d matrix);
- KID / CMMD keep each sample's global index and put gathered features back in global order, so
  seeded KID subsets pick the same samples whatever the number of processes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from lightning_fid.engine._accumulators import FeatureMoments
from lightning_fid.engine._distributed import all_reduce_packed, default_index, order_by_index
from lightning_fid.engine._networks import SPATIAL_DIM
from lightning_fid.engine._validation import ArrayLike, as_tensor
from lightning_fid.metrics.cmmd import cmmd
from lightning_fid.metrics.fid import frechet_distance, reference_factor, warn_if_rank_deficient
from lightning_fid.metrics.inception_score import inception_score
from lightning_fid.metrics.kid import kid
from lightning_fid.metrics.prdc import density_coverage, precision_recall


class _ExtractingMetric(Metric):
    """Shared input handling: optional frozen feature extractor, then (N, D) feature checks."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    #: the named output it reads of an extractor that returns several (InceptionV3(logits=True, spatial=True))
    _output_name = "features"

    def __init__(self, feature_extractor: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.feature_extractor = feature_extractor
        if feature_extractor is not None:
            feature_extractor.eval().requires_grad_(False)

    def _features(self, x: ArrayLike) -> torch.Tensor:
        x = as_tensor(x, "input") if not isinstance(x, torch.Tensor) else x
        if self.feature_extractor is not None:
            with torch.no_grad():
                x = self.feature_extractor(x)
            if isinstance(x, (tuple, list)):  # several named outputs: take this metric's
                names = tuple(getattr(self.feature_extractor, "outputs", ()))
                if self._output_name not in names:
                    raise ValueError(
                        f"{type(self).__name__} reads the {self._output_name!r} output, but feature_extractor "
                        f"returns {len(x)} outputs named {names}"
                    )
                x = x[names.index(self._output_name)]
        if x.ndim != 2:
            raise ValueError(f"expected (batch, features), got shape {tuple(x.shape)}")
        return x


class FID(_ExtractingMetric):
    """Fréchet distance between real and generated features, from float64 moments.

    ``update(x, real)`` takes features (or images when ``feature_extractor`` is given).
    With ``reset_real_features=False`` the real statistics and their matrix square root survive
    ``reset()``, so repeated evaluations against one reference cost one eigvalsh each.
    """

    def __init__(
        self,
        num_features: int,
        feature_extractor: nn.Module | None = None,
        reset_real_features: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(feature_extractor, **kwargs)
        self.num_features = num_features
        self.reset_real_features = reset_real_features
        for prefix in ("real", "fake"):
            self.add_state(f"{prefix}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{prefix}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(
                f"{prefix}_outer", torch.zeros(num_features, num_features, dtype=torch.float64), dist_reduce_fx="sum"
            )
        self._real_root: torch.Tensor | None = None

    def _moments(self, prefix: str) -> FeatureMoments:
        return FeatureMoments.from_tensors(
            getattr(self, f"{prefix}_n"), getattr(self, f"{prefix}_sum"), getattr(self, f"{prefix}_outer")
        )

    def update(self, x: ArrayLike, real: bool) -> None:
        """Add a batch of real or generated samples."""
        if real:
            self._real_root = None
        self._moments("real" if real else "fake").update(self._features(x))

    def _sync_dist(self, dist_sync_fn=None, process_group=None) -> None:
        names = list(self._reductions)
        reduced = all_reduce_packed([getattr(self, n) for n in names], process_group or self.process_group)
        for name, value in zip(names, reduced):
            setattr(self, name, value)

    def compute(self) -> torch.Tensor:
        real, fake = self._moments("real"), self._moments("fake")
        for what, m in (("real", real), ("generated", fake)):
            warn_if_rank_deficient(m.count, self.num_features, f"{what} samples")
        root = self._real_root if self._real_root is not None else reference_factor(real.cov)
        if not self.reset_real_features:
            self._real_root = root  # the reference is fixed: factor it once
        value = frechet_distance(real.mean, real.cov, fake.mean, fake.cov, sigma1_sqrt=root)
        return torch.tensor(value, dtype=torch.float64)

    def reset(self) -> None:
        if self.reset_real_features:
            super().reset()
            self._real_root = None
            return
        keep = {n: getattr(self, n).clone() for n in ("real_n", "real_sum", "real_outer")}
        super().reset()
        for name, value in keep.items():
            setattr(self, name, value)


class SFID(FID):
    """sFID as ADM computes it: :class:`FID` on 2023-d spatial Inception features. With
    ``feature_extractor=InceptionV3(spatial=True)`` (also ``logits=True``) ``update`` takes uint8 images
    and reads the ``"spatial"`` output; without one it takes (N, 2023) features."""

    _output_name = "spatial"

    def __init__(
        self, feature_extractor: nn.Module | None = None, reset_real_features: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(SPATIAL_DIM, feature_extractor, reset_real_features, **kwargs)


class _FeatureSetMetric(_ExtractingMetric):
    """Keeps every sample's features with a global index (KID and CMMD need the samples themselves)."""

    def __init__(self, feature_extractor: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(feature_extractor, **kwargs)
        for prefix in ("real", "fake"):
            self.add_state(f"{prefix}_features", [], dist_reduce_fx="cat")
            self.add_state(f"{prefix}_index", [], dist_reduce_fx="cat")
        self._seen = {"real": 0, "fake": 0}

    def update(self, x: ArrayLike, real: bool, index: torch.Tensor | None = None) -> None:
        """Add a batch; ``index`` gives the samples' global numbers (default: DistributedSampler order)."""
        prefix = "real" if real else "fake"
        feats = self._features(x).detach()
        if index is None:
            index = default_index(feats.shape[0], self._seen[prefix], feats.device)
        self._seen[prefix] += feats.shape[0]
        getattr(self, f"{prefix}_features").append(feats)
        getattr(self, f"{prefix}_index").append(torch.as_tensor(index, dtype=torch.int64, device=feats.device))

    def _ordered(self, prefix: str) -> torch.Tensor:
        feats = getattr(self, f"{prefix}_features")
        if isinstance(feats, list) and not feats:
            raise ValueError(f"no {prefix} samples were added before compute()")
        return order_by_index(dim_zero_cat(feats), dim_zero_cat(getattr(self, f"{prefix}_index")))

    def reset(self) -> None:
        super().reset()
        self._seen = {"real": 0, "fake": 0}


class KID(_FeatureSetMetric):
    """KID mean and std over seeded subsets (see :func:`lightning_fid.metrics.kid`)."""

    def __init__(
        self,
        num_subsets: int = 100,
        subset_size: int = 1000,
        seed: int = 0,
        feature_extractor: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(feature_extractor, **kwargs)
        self.num_subsets = num_subsets
        self.subset_size = subset_size
        self.seed = seed

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = kid(
            self._ordered("real"),
            self._ordered("fake"),
            self.num_subsets,
            self.subset_size,
            self.seed,
            distributed=True,
            group=self.process_group,
        )
        return torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)


class CMMD(_FeatureSetMetric):
    """CMMD on embeddings (see :func:`lightning_fid.metrics.cmmd`)."""

    def __init__(
        self,
        sigma: float = 10.0,
        scale: float = 1000.0,
        feature_extractor: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(feature_extractor, **kwargs)
        self.sigma = sigma
        self.scale = scale

    def compute(self) -> torch.Tensor:
        value = cmmd(
            self._ordered("real"),
            self._ordered("fake"),
            self.sigma,
            self.scale,
            distributed=True,
            group=self.process_group,
        )
        return torch.tensor(value, dtype=torch.float64)


class _BallMetric(_FeatureSetMetric):
    """Shared state of the k-nearest-neighbour metrics: real and generated features in global order."""

    higher_is_better = True
    function: Any = None  # precision_recall or density_coverage

    def __init__(self, k: int, feature_extractor: nn.Module | None = None, **kwargs: Any) -> None:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        super().__init__(feature_extractor, **kwargs)
        self.k = k

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = type(self).function(
            self._ordered("real"), self._ordered("fake"), self.k, distributed=True, group=self.process_group
        )
        return torch.tensor(first, dtype=torch.float64), torch.tensor(second, dtype=torch.float64)


class PrecisionRecall(_BallMetric):
    """Improved precision and recall (k = 3), see :func:`lightning_fid.metrics.precision_recall`."""

    function = staticmethod(precision_recall)

    def __init__(self, k: int = 3, feature_extractor: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(k, feature_extractor, **kwargs)


class DensityCoverage(_BallMetric):
    """Density and coverage (k = 5), see :func:`lightning_fid.metrics.density_coverage`."""

    function = staticmethod(density_coverage)

    def __init__(self, k: int = 5, feature_extractor: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(k, feature_extractor, **kwargs)


class InceptionScore(_FeatureSetMetric):
    """Inception Score (mean, std over ``splits``) of generated logits added with ``update(x, real=False)``,
    in global sample order (see :func:`lightning_fid.metrics.inception_score`)."""

    higher_is_better = True
    _output_name = "logits"

    def __init__(self, splits: int = 10, feature_extractor: nn.Module | None = None, **kwargs: Any) -> None:
        if not isinstance(splits, int) or splits < 1:
            raise ValueError(f"splits must be a positive integer, got {splits!r}")
        super().__init__(feature_extractor, **kwargs)
        self.splits = splits

    def update(self, x: ArrayLike, real: bool = False, index: torch.Tensor | None = None) -> None:
        """Add generated logits (``real=True`` is refused: the score has no reference set)."""
        if real:
            raise ValueError("InceptionScore takes generated samples only: call update(x) or update(x, real=False)")
        super().update(x, False, index)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = inception_score(self._ordered("fake"), self.splits)
        return torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
