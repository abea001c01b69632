"""How much memory the statistics of a run keep, checked before training against what the device has.

Kept-feature metrics (KID, CMMD, precision / recall, density / coverage, FID-infinity, IS) hold every
feature row of both sets on every rank (float32, gathered in global order); Fréchet distances hold
two d x d float64 sums; per-class metrics one per class and set. A run that cannot hold them would die
at its first evaluation, after the first epoch: it is refused before training instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from lightning_fid.engine._slots import Slot

#: the most a run may keep of the memory available when it starts
SHARE = 0.8


def needed_bytes(
    slots: Sequence[Slot], num_samples: int, num_real: int, grouped: Mapping[str, int] | None = None
) -> int:
    """Bytes the statistics of one evaluation and its reference keep (both sets, all slots); with
    ``grouped`` (slot name: jackknife groups), also each grouped slot's per-group moments of the
    generated set and the merge's copy of them."""
    total = 0
    for slot in slots:
        d = slot.info.feature_dim
        if slot.keep_features:
            total += (num_samples + num_real) * d * 4
        if slot.moments:
            total += 2 * (d * d + d) * 8
        total += 2 * slot.classes * (d * d + d) * 8
        total += 2 * (grouped or {}).get(slot.info.name, 0) * (d * d + d + 1) * 8
    return total


def available_bytes(device: torch.device) -> int | None:
    """Memory available on ``device`` now (CUDA: free device memory; CPU on Linux: MemAvailable), or
    None where it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    meminfo = Path("/proc/meminfo")
    if device.type != "cpu" or not meminfo.is_file():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def check_memory(slots: Sequence[Slot], num_samples: int, num_real: int, device: torch.device) -> None:
    """Refuse a run whose statistics cannot fit in memory, naming what to lower.

    Raises:
        ValueError: when the statistics need more than :data:`SHARE` of the available memory.
    """
    needed = needed_bytes(slots, num_samples, num_real)
    available = available_bytes(device)
    if available is None or needed <= SHARE * available:
        return
    kept = [s.info.name for s in slots if s.keep_features]
    raise ValueError(
        f"the metrics' statistics need {needed / 2**30:.1f} GiB on {device} ({num_samples} generated and {num_real} "
        f"real samples" + (f", every feature kept for {kept}" if kept else "") + f"), but only {available / 2**30:.1f} "
        "GiB are available: lower num_samples / final_num_samples or RealData(num_real=...), or drop the "
        "kept-feature metrics (KID, CMMD, IS, precision/recall, density/coverage, FID-infinity)"
    )


def check_group_memory(
    slots: Sequence[Slot], grouped: Mapping[str, int], num_samples: int, device: torch.device
) -> None:
    """Refuse error bars whose per-group moments cannot fit: each grouped slot keeps G x (d^2 + d + 1)
    float64 values for the generated set, and its merge one copy of them.

    Raises:
        ValueError: when they and the run's other statistics need more than :data:`SHARE` of the
            available memory, naming ``error_bars``.
    """
    needed = needed_bytes(slots, num_samples, 0, grouped)
    extra = needed - needed_bytes(slots, num_samples, 0)
    available = available_bytes(device)
    if not extra or available is None or needed <= SHARE * available:
        return
    raise ValueError(
        f"error bars with {max(grouped.values())} groups keep {extra / 2**30:.1f} GiB of per-group moments on "
        f"{device} (for {sorted(grouped)}), more than the {available / 2**30:.1f} GiB available allow: lower "
        "error_bars (True: 10 groups) or set error_bars=False"
    )
