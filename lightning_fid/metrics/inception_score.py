"""Inception Score (Salimans et al. 2016) from the TF Inception's 1008-way unbiased logits.

Exactly torch-fidelity's ``isc_features_to_metric`` with ``shuffle=False``: float64 softmax, splits
``[i*N//splits, (i+1)*N//splits)`` in the given sample order, exp of the mean KL(p(y|x) || p(y)) per
split, then the mean and population std over splits. The order is the caller's (the callback's global
sample order), so the value does not depend on how samples were spread over processes; torch-fidelity
by default shuffles first with a seeded permutation, which is the caller's choice here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from lightning_fid.engine._validation import ArrayLike, as_tensor, check_finite
from lightning_fid.metrics._jackknife import Estimate
from lightning_fid.metrics.base import Context, Metric, Needs, RunInfo, check_int

if TYPE_CHECKING:
    from lightning_fid.engine._stats import Statistics


def split_scores(logits: ArrayLike, splits: int = 10, split_size: int | None = None) -> list[float]:
    """exp(E_x KL(p(y|x) || p(y))) for each of the ``splits`` consecutive chunks of ``logits`` (torch-fidelity),
    or with ``split_size`` for each chunk ``[i * split_size, (i + 1) * split_size)``, the last one shorter
    when ``split_size`` does not divide N (guided-diffusion's ``compute_inception_score``)."""
    x = as_tensor(logits, "logits")
    if x.ndim != 2:
        raise ValueError(f"logits must be a 2-D (num_samples, num_classes) array, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if x.shape[1] < 2:
        raise ValueError(f"logits need at least 2 classes, got shape {tuple(x.shape)}")
    if split_size is not None:
        if isinstance(split_size, bool) or not isinstance(split_size, (int, np.integer)) or split_size < 1:
            raise ValueError(f"split_size must be a positive integer, got {split_size!r}")
        bounds = [(s, min(s + split_size, n)) for s in range(0, n, split_size)]
    elif isinstance(splits, bool) or not isinstance(splits, (int, np.integer)) or not 1 <= splits <= n:
        raise ValueError(f"splits must be an integer between 1 and the number of samples ({n}), got {splits!r}")
    else:
        bounds = [(i * n // splits, (i + 1) * n // splits) for i in range(splits)]
    check_finite(x, "logits")
    scores = []
    for start, stop in bounds:
        # one chunk at a time: float64 probabilities of 50k x 1008 logits would take 400 MB at once
        chunk = x[start:stop].to(torch.float64)
        p = chunk.softmax(dim=1)
        log_p = chunk.log_softmax(dim=1)
        q = p.mean(dim=0, keepdim=True)
        # torch-fidelity's p * (log p - log q); terms with p == 0 are 0 (they would be 0 * inf = NaN
        # where a class has underflowed to probability 0 in the whole chunk).
        kl = torch.where(p > 0, p * (log_p - q.log()), torch.zeros((), dtype=p.dtype, device=p.device))
        scores.append(kl.sum(dim=1).mean().exp().item())
    return scores


def inception_score(logits: ArrayLike, splits: int = 10, split_size: int | None = None) -> tuple[float, float]:
    """(mean, population std) of the Inception Score over ``splits`` consecutive splits (or splits of
    ``split_size`` samples, see :func:`split_scores`).

    ``logits`` are (N, C) unbiased logits (torch-fidelity's ``logits_unbiased``, C = 1008 for the TF
    Inception) in global sample order. Every split must hold at least one sample: 1 <= splits <= N.
    """
    scores = split_scores(logits, splits, split_size)
    return float(np.mean(scores)), float(np.std(scores))


class InceptionScore(Metric):
    """Inception Score (Salimans et al. 2016) from the TF Inception's logits, over ``splits``
    consecutive splits of the fixed global sample order. Logs ``is`` and ``is_std``; higher is better. With
    error bars, ``is_se`` is the standard error of the mean over the splits, ``is_std / sqrt(splits - 1)``
    (the splits, fixed by sample index, are its jackknife groups).

    It always reads Inception-v3's logits: the callback's ``feature_extractor`` does not apply to it.
    To score with your own classifier, pass ``InceptionScore(extractor=classifier)`` (its output is
    taken as the class logits).

    Args:
        splits: number of splits (reference: 10).
        split_size: instead, splits of this many samples, the last one shorter if it does not divide
            the sample count (ADM: 5000).
        key: the logged key (default ``"is"``; the std is ``<key>_std``).
        extractor: a classifier returning (N, C) logits, instead of Inception-v3.

    Raises:
        ValueError: ``splits`` below 1 or ``split_size`` below 2, or (before training) a split of fewer
            than 2 samples.
    """

    name = "is"
    needs = Needs(output="logits", features=True)
    higher_is_better = True

    def __init__(
        self,
        splits: int = 10,
        split_size: int | None = None,
        *,
        key: str | None = None,
        extractor: nn.Module | None = None,
    ) -> None:
        super().__init__(key=key, extractor=extractor)
        self.splits = check_int(splits, "InceptionScore splits", 1)
        self.split_size = None if split_size is None else check_int(split_size, "InceptionScore split_size", 2)

    def keys(self, run: RunInfo | None = None) -> tuple[str, ...]:
        return (self.key, self.key + "_std")

    def count(self, n: int) -> int:
        """The number of splits of ``n`` samples."""
        return self.splits if self.split_size is None else -(-n // self.split_size)

    def check_run(self, run: RunInfo) -> None:
        # a split of one sample scores exactly 1.0 whatever the images
        if self.split_size is None and 2 * self.splits > run.smallest:
            raise ValueError(
                f"InceptionScore(splits={self.splits}) needs at least 2 samples per split, but num_samples="
                f"{run.smallest}: raise num_samples or lower splits (the CLI: --is-splits)"
            )
        last = [n % self.split_size for n in (run.smallest, run.num_samples)] if self.split_size else []
        if 1 in last:
            raise ValueError(
                f"InceptionScore(split_size={self.split_size}) leaves a last split of 1 sample with num_samples="
                f"{run.smallest} or {run.num_samples}: change num_samples or split_size"
            )

    def error_keys(self, run: RunInfo | None = None) -> tuple[str, ...]:
        splits = self.count(run.smallest) if run is not None else self.splits if self.split_size is None else 2
        return (self.key,) if splits >= 2 else ()  # one split: nothing to compare it with

    def compute(self, real: Statistics, fake: Statistics, context: Context) -> dict[str, float | Estimate]:
        scores = torch.tensor(split_scores(fake.features, self.splits, self.split_size), dtype=torch.float64)
        mean, std = float(np.mean(scores.numpy())), float(np.std(scores.numpy()))
        if not context.groups or len(scores) < 2:
            return {self.key: mean, self.key + "_std": std}
        # The splits are its groups: the score is their mean, so leaving one out gives the mean of the
        # others, and the jackknife SE is exactly std / sqrt(splits - 1) (the splits are independent).
        others = (scores.sum() - scores) / (len(scores) - 1)
        return {self.key: Estimate(mean, others, torch.ones(len(scores))), self.key + "_std": std}
