"""Label policies: which class each generated sample of a class-conditional generator gets.

``conditions=`` takes an explicit sequence (sample ``i`` gets ``conditions[i]``) or a policy:

- ``"uniform"``: an independent uniform class per sample, as DiT / SiT / REPA's ``sample_ddp.py``
  draw them (``torch.randint(0, num_classes, ...)``). Their draw depends on the rank and the batch;
  ours is counter-based: sample ``i``'s label is a 64-bit mix (splitmix64) of the seed and ``i``,
  reduced modulo the number of classes (bias below ``num_classes / 2**64``), so it does not depend on
  the number of processes, on the batch size or on how many samples are drawn.
- ``"balanced"``: ``N / num_classes`` samples per class (VAR / MAR: 50 per class for 50k), in the
  order ``i % num_classes`` so every prefix of the samples is as balanced as it can be.

No Lightning here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lightning_fid.metrics.base import check_int

POLICIES = ("uniform", "balanced")
_MASK = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Steele, Lea & Flood's SplitMix64 finaliser on uint64 counters (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniform_labels(num_samples: int, num_classes: int, seed: int) -> torch.Tensor:
    """Sample ``i``'s class: splitmix64(splitmix64(seed) + i) mod ``num_classes`` (int64, (N,))."""
    key = _splitmix64(np.array([seed & _MASK], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        counters = key + np.arange(num_samples, dtype=np.uint64)
    return torch.from_numpy((_splitmix64(counters) % np.uint64(num_classes)).astype(np.int64))


def balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """``i % num_classes`` (int64, (N,)): every class equally often when ``num_classes`` divides N."""
    return torch.arange(num_samples, dtype=torch.int64) % num_classes


@dataclass(frozen=True)
class LabelPolicy:
    """A rule that gives each generated sample its class label.

    Args:
        policy: ``"uniform"`` or ``"balanced"`` (see the module docstring).
        num_classes: the number of classes of the generator.

    Raises:
        ValueError: an unknown policy or a non-positive number of classes.
    """

    policy: str
    num_classes: int

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"conditions={self.policy!r}; choose from {POLICIES} or pass one label per sample")
        check_int(self.num_classes, "num_classes", 1)

    def labels(self, num_samples: int, seed: int) -> torch.Tensor:
        """The first ``num_samples`` labels under the evaluation seed ``seed`` (uniform labels change
        with the seed as the noise does; balanced ones do not)."""
        if self.policy == "uniform":
            return uniform_labels(num_samples, self.num_classes, seed)
        return balanced_labels(num_samples, self.num_classes)

    def check(self, sample_counts: Sequence[int]) -> None:
        """Refuse ``"balanced"`` labels that cannot be balanced for an evaluation's sample count.

        Raises:
            ValueError: naming the count and the options to change.
        """
        if self.policy != "balanced":
            return
        for n in sample_counts:
            if n % self.num_classes:
                raise ValueError(
                    f"conditions='balanced' needs a sample count divisible by num_classes={self.num_classes}, "
                    f"but an evaluation generates {n}: change num_samples / final_num_samples, or use "
                    "conditions='uniform'"
                )

    def describe(self) -> str:
        """One line for the protocol card."""
        if self.policy == "uniform":
            return f"uniform: independent uniform class of {self.num_classes} per sample, keyed by seed and index"
        return f"balanced: class i % {self.num_classes} for sample i (N / {self.num_classes} per class)"


def label_policy(conditions: Any, num_classes: int | None) -> LabelPolicy | None:
    """The policy ``conditions`` names (None for an explicit sequence or no conditions).

    Raises:
        ValueError: a policy name without ``num_classes``, ``num_classes`` without a policy, or an
            unknown name.
    """
    if isinstance(conditions, LabelPolicy):
        return conditions
    if isinstance(conditions, str):
        if num_classes is None:
            raise ValueError(f"conditions={conditions!r} needs num_classes= (the generator's number of classes)")
        return LabelPolicy(conditions, num_classes)
    if num_classes is not None:
        raise ValueError(
            "num_classes= only goes with conditions='uniform' or 'balanced' (explicit conditions carry their labels)"
        )
    return None


def describe_conditions(conditions: Any, policy: LabelPolicy | None) -> str:
    """The card's line for an explicit label sequence, a policy, or none."""
    if policy is not None:
        return policy.describe()
    if conditions is None:
        return "unconditional"
    return f"explicit: {len(conditions)} user-given conditions, sample i gets conditions[i]"


def count_classes(conditions: Any, label_key: Any, policy: LabelPolicy | None = None) -> int:
    """Number of classes of per-class metrics: the label policy's, else from the generated samples' labels."""
    if conditions is None or label_key is None:
        raise ValueError(
            "per-class metrics need conditions= (the generated samples' integer class labels) and "
            "RealData(label_key=...) (where real batches hold theirs)"
        )
    try:
        labels = torch.as_tensor(conditions) if not isinstance(conditions, torch.Tensor) else conditions
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"per-class metrics need conditions= to be integer class labels, one per sample; got "
            f"{type(conditions).__name__} of {type(next(iter(conditions), None)).__name__} (prompts? use a label list)"
        ) from None
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.ndim != 1 or int(labels.min()) < 0:
        raise ValueError("per-class metrics need conditions= to be non-negative integer class labels, one per sample")
    return policy.num_classes if policy is not None else int(labels.max()) + 1


def check_class_counts(conditions: Any, classes: int, num_samples: int) -> None:
    """Refuse labels whose first ``num_samples`` (what an evaluation generates) leave a class with fewer
    than 2 samples: its per-class FID could never be computed."""
    labels = torch.as_tensor(conditions)[:num_samples].long()
    counts = torch.bincount(labels, minlength=classes)
    thin = [c for c in range(classes) if int(counts[c]) < 2]
    if thin:
        raise ValueError(
            f"per-class metrics: classes {thin[:10]} get fewer than 2 of the {num_samples} generated samples "
            "(conditions[:num_samples]); use balanced labels such as torch.arange(num_samples) % num_classes"
        )
