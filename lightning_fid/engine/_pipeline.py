"""One sample set through the data walk, free of Lightning: sample -> quantise -> extract -> accumulate
-> merge. The metric step is :mod:`lightning_fid.engine._scoring`; the callback and the CLI are thin
layers over this module.

Every extractor runs once per image (a *slot*), and its features feed every metric that uses that
slot: float64 moments for Fréchet distances, kept rows (with global sample indices) for kernel and
sample-based metrics. Merging is one packed all-reduce for all moments plus one ordered gather per
kept set, so the result is identical for any number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lightning_fid.engine._accumulators import FeatureBank, FeatureMoments, GroupMoments
from lightning_fid.engine._distributed import Group, agreed, all_reduce_max, all_reduce_packed, any_rank, rank_and_world
from lightning_fid.engine._hygiene import full_precision, sampling_precision
from lightning_fid.engine._images import REAL, InputRange, image_grid, to_uint8
from lightning_fid.engine._real import RealOptions, RealSource
from lightning_fid.engine._sampling import Sampler, condition_slice, generate, plan
from lightning_fid.engine._slots import Slot, extract
from lightning_fid.engine._stats import Statistics, identity_metadata

#: per-class FID keeps one float64 d x d matrix per class and set: refuse more than this many bytes
CLASS_MEMORY_BUDGET = 4 * 2**30


def check_class_memory(classes: int, dim: int) -> None:
    """Refuse per-class moments beyond :data:`CLASS_MEMORY_BUDGET` (classes x d x d float64)."""
    needed = classes * dim * dim * 8
    if needed > CLASS_MEMORY_BUDGET:
        raise ValueError(
            f"per-class FID keeps a {dim}x{dim} float64 covariance per class: {classes} classes need "
            f"{needed / 2**30:.1f} GiB per sample set, over the {CLASS_MEMORY_BUDGET / 2**30:.0f} GiB budget; use fewer "
            "classes (e.g. a subset of labels) or a smaller feature extractor"
        )


@dataclass
class Accumulator:
    """Per-rank accumulation of one sample set over all slots (``groups``: the slots whose moments are
    kept per jackknife group instead, and how many groups: error bars of Fréchet distances; their total
    is the sum of the groups')."""

    slots: list[Slot]
    device: torch.device
    side: str = "the generated samples"  # for messages: whose features these are
    groups: Mapping[str, int] = field(default_factory=dict)
    moments: dict[str, FeatureMoments] = field(default_factory=dict)
    group_moments: dict[str, GroupMoments] = field(default_factory=dict)
    banks: dict[str, FeatureBank] = field(default_factory=dict)
    class_moments: dict[str, list[FeatureMoments]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for slot in self.slots:
            if slot.moments and self.groups.get(slot.name, 0):
                self.group_moments[slot.name] = GroupMoments(slot.info.feature_dim, self.groups[slot.name], self.device)
            elif slot.moments:
                self.moments[slot.name] = FeatureMoments(slot.info.feature_dim, device=self.device)
            if slot.keep_features:
                self.banks[slot.name] = FeatureBank(slot.info.feature_dim)
            if slot.classes:
                check_class_memory(slot.classes, slot.info.feature_dim)
                self.class_moments[slot.name] = [
                    FeatureMoments(slot.info.feature_dim, device=self.device) for _ in range(slot.classes)
                ]

    def add(self, images_uint8: torch.Tensor, index: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Extract features once per network and record them under their global sample indices (and,
        for per-class slots, under their class ``labels``)."""
        computed: dict[int, Any] = {}
        for slot in self.slots:
            feats = extract(slot, images_uint8, computed)
            if not bool(torch.isfinite(feats).all()):
                raise ValueError(
                    f"{slot.info.name} returned NaN/inf features for {self.side} (samples "
                    f"{int(index.min())}..{int(index.max())}): a collapsed generator's constant images "
                    "through an L2-normalising encoder give 0/0, for example"
                )
            if slot.name in self.group_moments:
                self.group_moments[slot.name].update(feats, index)
            elif slot.moments:
                self.moments[slot.name].update(feats)
            if slot.keep_features:
                self.banks[slot.name].add(feats.to(torch.float32), index.to(feats.device))
            if slot.classes:
                self._add_classes(slot, feats, labels)

    def _add_classes(self, slot: Slot, feats: torch.Tensor, labels: torch.Tensor | None) -> None:
        if labels is None:
            raise ValueError("per-class metrics need a class label for every sample (label_key= and conditions=)")
        labels = labels.to(feats.device)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= slot.classes):
            raise ValueError(
                f"class labels span [{int(labels.min())}, {int(labels.max())}], outside the "
                f"{slot.classes} classes 0..{slot.classes - 1} that conditions= defines"
            )
        for c in labels.unique().tolist():
            self.class_moments[slot.name][c].update(feats[labels == c])

    def discard(self) -> None:
        """Free what was accumulated (an evaluation that will not be scored)."""
        for bank in self.banks.values():
            bank.reset()

    def finish(self, group: Group = None) -> dict[str, Statistics]:
        """Merge across ranks (one all-reduce for all moments, one gather per kept set)."""
        names = list(self.moments)
        every = [self.moments[n] for n in names] + [m for n in self.class_moments for m in self.class_moments[n]]
        flat = [t for m in every for t in (m.n, m.sum, m.outer)]
        flat += [t for m in self.group_moments.values() for t in m.tensors()]
        reduced = all_reduce_packed(flat, group) if flat else []
        out: dict[str, Statistics] = {
            slot.name: Statistics(metadata=identity_metadata(slot.info)) for slot in self.slots
        }
        for i, name in enumerate(names):
            m = FeatureMoments.from_tensors(*reduced[3 * i : 3 * i + 3])
            out[name].n = m.count
            if m.count >= 2:
                out[name].mu, out[name].sigma = m.mean, m.cov
        position = len(names)
        for name, per_class in self.class_moments.items():
            for c in range(len(per_class)):
                m = FeatureMoments.from_tensors(*reduced[3 * position : 3 * position + 3])
                position += 1
                out[name].classes[c] = Statistics(
                    m.mean if m.count >= 2 else None, m.cov if m.count >= 2 else None, m.count
                )
        for name in self.group_moments:
            n, sums, outer = reduced[3 * position : 3 * position + 3]
            position += 1
            m = FeatureMoments.from_tensors(n.sum(), sums.sum(0), outer.sum(0))
            out[name].n, out[name].group_moments = m.count, (n, sums, outer)
            if m.count >= 2:
                out[name].mu, out[name].sigma = m.mean, m.cov
        for name, bank in self.banks.items():
            out[name].features = bank.gather(group)
            out[name].n = out[name].features.shape[0]
            bank.reset()  # free per-rank copies now
        return out


def extract_real(
    source: RealSource,
    num: int,
    slots: list[Slot],
    options: RealOptions,
    device: torch.device,
    progress: bool = False,
    desc: str = "lightning_fid: real statistics",
) -> dict[str, Statistics]:
    """Statistics of the first ``num`` images of ``source``, shared over ranks (a collective call)."""
    rank, world = rank_and_world()
    acc = Accumulator(slots, device, side="the real data")
    n_batches = len(range(rank * options.batch_size, num, world * options.batch_size))
    span = [-math.inf, -math.inf]  # [-min, max] of float images, for the range check
    bar = tqdm(total=n_batches, desc=desc, disable=not (progress and rank == 0), leave=False)
    with full_precision():
        with agreed("reading the real data", device):
            for index, images, labels in source.batches(
                num, options.batch_size, rank, world, options.image_key, options.transform, options.label_key
            ):
                declared = "uint8" if images.dtype == torch.uint8 else options.input_range
                if images.dtype != torch.uint8 and images.numel():
                    span = [max(span[0], -float(images.min())), max(span[1], float(images.max()))]
                acc.add(to_uint8(images, declared, strict=True, source=REAL).to(device), index, labels)
                bar.update(1)
        bar.close()
        stats = acc.finish()
    neg_lo, hi = all_reduce_max(span, device)
    if math.isfinite(hi):
        for entry in stats.values():
            entry.metadata["input_span"] = [-neg_lo, hi]
    return stats


@dataclass
class GeneratedSet:
    """One evaluation's generated side: merged statistics (None if any image was not finite) and the
    grid of the first samples (rank 0 only, None when not asked for)."""

    stats: dict[str, Statistics] | None
    grid: torch.Tensor | None


def sample_and_extract(
    sampler: Sampler,
    module: nn.Module,
    slots: list[Slot],
    *,
    num_samples: int,
    batch_size: int,
    seed: int,
    input_range: InputRange,
    device: torch.device,
    conditions: Sequence[Any] | None = None,
    sample_autocast: torch.dtype | None = None,
    grid_size: int = 0,
    progress: bool = False,
    groups: Mapping[str, int] | None = None,
) -> GeneratedSet:
    """Sample ``num_samples`` fixed-noise images over all ranks and merge their statistics (collective).
    ``groups``: the slots whose moments are also kept per jackknife group (error bars), and how many.

    The generator runs in full precision unless ``sample_autocast`` opts in to autocast; extraction
    always runs in full precision. Non-finite images make the whole set invalid on every rank (agreed
    with one all-reduce), so the caller logs NaN instead of a number computed from part of the samples.
    """
    rank, world = rank_and_world()
    batches = plan(num_samples, batch_size, rank, world)
    grid = None
    bad = False
    acc = Accumulator(slots, device, groups=dict(groups or {}))
    bar = tqdm(total=len(batches), desc="lightning_fid: sampling", disable=not (progress and rank == 0), leave=False)
    with agreed("sampling the generator", device), sampling_precision(sample_autocast, device):
        for batch, images in generate(sampler, module, batches, seed, conditions):
            with full_precision():
                if not bool(torch.isfinite(images).all()):
                    bad = True
                    continue
                u8 = to_uint8(images.detach(), input_range, strict=False)
                if batch.index == 0 and grid_size:
                    grid = image_grid(u8[:grid_size])
                labels = None
                if conditions is not None and any(slot.classes for slot in slots):
                    labels = torch.as_tensor(condition_slice(conditions, batch.sample_index)).long()
                acc.add(u8.to(device), batch.sample_index, labels)
            bar.update(1)  # after extraction: the bar follows the real work
    bar.close()
    with full_precision():
        if any_rank(bad, device):
            acc.discard()
            return GeneratedSet(None, grid)
        return GeneratedSet(acc.finish(), grid)
