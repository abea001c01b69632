"""Standard errors from one evaluation: a delete-a-group jackknife over groups fixed by sample index.

Generated sample ``i`` belongs to group ``i % G`` (``G = 10`` by default). A metric that supports error
bars returns, next to its value, its *replicates*: the value recomputed (or linearised, see
:func:`~lightning_fid.metrics.fid.frechet_replicates`) with one group left out. The jackknife turns
them into a standard error of the value over draws of the generated samples (the reference set held
fixed):

    SE^2 = (1/G) sum_g (h_g theta - (h_g - 1) theta_(g) - theta_J)^2 / (h_g - 1),   h_g = n / n_g,

the delete-m_g jackknife of Busing, Meijer & van der Leeden (1999) for groups of unequal size ``n_g``,
which reduces to the textbook ``(G-1)/G sum_g (theta_(g) - mean)^2`` for equal groups. Empty groups
(fewer samples than groups) are left out. The groups depend on the global sample index only, so the
error bars are identical for any number of processes, and two evaluations of the same fixed noise
share them: the replicates of a *difference* between two evaluations are the differences of their
replicates (:meth:`Estimate.minus`), which gives the paired standard error of the difference.

Everything here is float64 and on the CPU: an estimate is ``G`` numbers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

#: groups of the jackknife when error bars are on (``error_bars=True``): the SE then has G - 1 = 9
#: degrees of freedom (its own relative noise is about 1 / sqrt(2 * 9) = 24 %), and the Fréchet
#: distances keep G float64 d x d moment matrices per generated set (320 MB at d = 2048)
DEFAULT_GROUPS = 10


def check_groups(error_bars: Any, num_samples: int | None = None) -> int:
    """The number of jackknife groups an ``error_bars`` option asks for: ``True`` gives
    :data:`DEFAULT_GROUPS`, ``False`` / ``None`` / ``0`` none, an integer >= 2 that many, at most
    ``num_samples`` (an evaluation's samples: a group asked for needs one).

    Raises:
        ValueError: anything else, or more groups than samples.
    """
    if error_bars is None or error_bars is False:
        return 0
    if error_bars is True:  # the default: fewer samples than groups leave groups empty (left out of the SE)
        return DEFAULT_GROUPS
    if isinstance(error_bars, numbers.Integral) and (int(error_bars) == 0 or int(error_bars) >= 2):
        groups = int(error_bars)
    else:
        raise ValueError(
            f"error_bars must be True (the default: {DEFAULT_GROUPS} jackknife groups), False, or a number of "
            f"groups >= 2, got {error_bars!r}"
        )
    if num_samples is not None and groups > num_samples:
        raise ValueError(
            f"error_bars asks for {groups} jackknife groups but an evaluation draws only {num_samples} samples: "
            f"use at most num_samples groups (error_bars=True gives {DEFAULT_GROUPS}), or error_bars=False"
        )
    return groups


def group_sizes(n: int, groups: int) -> torch.Tensor:
    """How many of the samples ``0 .. n-1`` fall in each group ``i % groups`` (float64, CPU)."""
    g = torch.arange(groups, dtype=torch.float64)
    return torch.floor((n - 1 - g) / groups) + 1 if n > 0 else torch.zeros(groups, dtype=torch.float64)


def group_ids(n: int, groups: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The group of each of the samples ``0 .. n-1`` (their position in global sample order)."""
    return torch.arange(n, device=device) % groups


def jackknife_se(value: float, replicates: torch.Tensor, sizes: torch.Tensor) -> float:
    """Delete-a-group jackknife standard error (see the module docstring); NaN with fewer than two
    non-empty groups or a non-finite replicate."""
    r, m = replicates.double().cpu(), sizes.double().cpu()
    keep = m > 0
    r, m = r[keep], m[keep]
    if r.numel() < 2 or not math.isfinite(value) or not bool(torch.isfinite(r).all()):
        return math.nan
    n = float(m.sum())
    h = n / m
    g = r.numel()
    theta_j = g * value - float(((1 - m / n) * r).sum())
    pseudo = h * value - (h - 1) * r
    return math.sqrt(float(((pseudo - theta_j) ** 2 / (h - 1)).sum()) / g)


@dataclass(frozen=True)
class Estimate:
    """A metric value with its delete-a-group replicates, as a metric's ``compute`` returns it for a
    key of :meth:`~lightning_fid.metrics.Metric.error_keys` when ``context.groups`` is set.

    Args:
        value: the value itself (what is logged under the key).
        replicates: (G,) the value with group g left out (or its first-order approximation).
        sizes: (G,) samples in each group (the weights of the jackknife; 0: an empty group).

    Raises:
        ValueError: replicates and sizes that are not two 1-D tensors of one length, or sizes that are
            not counts.
    """

    value: float
    replicates: torch.Tensor
    sizes: torch.Tensor

    def __post_init__(self) -> None:
        reps = torch.as_tensor(self.replicates).detach().to("cpu", torch.float64)
        sizes = torch.as_tensor(self.sizes).detach().to("cpu", torch.float64)
        if reps.ndim != 1 or sizes.ndim != 1 or reps.shape != sizes.shape:
            raise ValueError(
                f"an Estimate needs two 1-D tensors of one length (a replicate per group and its size), got "
                f"replicates of shape {tuple(reps.shape)} and sizes of shape {tuple(sizes.shape)}"
            )
        if not bool(torch.isfinite(sizes).all()) or bool((sizes < 0).any()) or bool((sizes != sizes.round()).any()):
            raise ValueError(f"group sizes must be counts (whole numbers >= 0), got {sizes.tolist()}")
        object.__setattr__(self, "value", float(self.value))
        object.__setattr__(self, "replicates", reps)
        object.__setattr__(self, "sizes", sizes)

    @property
    def se(self) -> float:
        """The jackknife standard error of :attr:`value`."""
        return jackknife_se(self.value, self.replicates, self.sizes)

    def pairs_with(self, other: Estimate) -> bool:
        """Whether a paired difference with ``other`` is defined: the same groups of the same sample
        count (the fixed noise itself is the caller's to keep)."""
        return torch.equal(self.sizes, other.sizes)

    def minus(self, other: Estimate) -> Estimate:
        """``self - other`` with its paired replicates: valid when both come from the same sample
        indices (the same fixed noise, sample count and groups); NaN replicates otherwise."""
        if not self.pairs_with(other):
            return Estimate(self.value - other.value, torch.full_like(self.sizes, math.nan), self.sizes)
        return Estimate(self.value - other.value, self.replicates - other.replicates, self.sizes)

    def state(self) -> dict[str, Any]:
        """Plain numbers for a checkpoint (``G`` floats and ``G`` sizes)."""
        return {"value": self.value, "replicates": self.replicates.tolist(), "sizes": self.sizes.tolist()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Estimate:
        """The inverse of :meth:`state`."""
        return cls(
            state["value"],
            torch.tensor(state["replicates"], dtype=torch.float64),
            torch.tensor(state["sizes"], dtype=torch.float64),
        )


def mean_estimate(sums: torch.Tensor, counts: torch.Tensor, per: float = 1.0) -> Estimate:
    """``sum / (per * count)`` of a per-sample quantity from its per-group sums and counts (precision;
    density with ``per = k``): each replicate is the same mean over the other groups' samples."""
    s, c = sums.double().cpu(), counts.double().cpu()
    total, n = float(s.sum()), float(c.sum())
    rest = n - c
    reps = torch.where(rest > 0, (total - s) / (per * rest.clamp(min=1)), torch.full_like(s, math.nan))
    return Estimate(total / (per * n), reps, c)


def per_group_sums(values: torch.Tensor, groups: int, offset: int = 0) -> torch.Tensor:
    """Sums of ``values`` (rows in global sample order, starting at sample ``offset``) per group ``i % groups``
    (float64, on ``values``' device)."""
    ids = (torch.arange(values.shape[0], device=values.device) + offset) % groups
    out = torch.zeros(groups, dtype=torch.float64, device=values.device)
    return out.index_add_(0, ids, values.to(torch.float64))
