"""One sample set through the data walk, free of Lightning: sample -> quantise -> extract -> accumulate
-> merge. The metric step reads the table in :mod:`lightning_fid.registry`; the callback and the CLI
are thin layers over this module.

Every extractor runs once per image (a *slot*), and its features feed every metric that uses that
slot: float64 moments for Fréchet distances, kept rows (with global sample indices) for kernel and
sample-based metrics. Merging is one packed all-reduce for all moments plus one ordered gather per
kept set, so the result is identical for any number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lightning_fid.distributed import Group, agreed, all_reduce_max, all_reduce_packed, any_rank, rank_and_world
from lightning_fid.extractors.base import ExtractorInfo, Frozen, describe, run_extractor
from lightning_fid.hygiene import full_precision, sampling_precision
from lightning_fid.images import GENERATED, REAL, InputRange, check_fill, to_uint8
from lightning_fid.real import RealOptions, RealSource
from lightning_fid.registry import SLOTS, slot_needs
from lightning_fid.reporting import image_grid
from lightning_fid.sampling import Sampler, generate, plan
from lightning_fid.stats import FeatureBank, FeatureMoments, Statistics


@dataclass
class Slot:
    """One extractor and what its features feed: moments (FID) and/or kept features (KID, CMMD)."""

    name: str  # a key of registry.SLOTS
    module: nn.Module
    info: ExtractorInfo
    moments: bool
    keep_features: bool
    standard: bool = False  # the slot's standard network (built from the published weights)


def make_slot(name: str, module: nn.Module, moments: bool, keep_features: bool, standard: bool = False) -> Slot:
    """Wrap ``module`` frozen and read its self-description (one probe pass if it declares no dim)."""
    frozen = module if isinstance(module, Frozen) else Frozen(module)
    return Slot(name, frozen, describe(frozen), moments, keep_features, standard)


def _shared(name: str, module: nn.Module | None, shared: Sequence[Slot]) -> Slot | None:
    for slot in shared:
        same_user_module = module is not None and slot.module.module is module
        same_standard = module is None and slot.standard and slot.name == name
        if same_user_module or same_standard:
            return slot
    return None


def build_slots(
    metrics: Iterable[str],
    extractors: Mapping[str, nn.Module | None] | None = None,
    weights: Mapping[str, Any] | None = None,
    shared: Sequence[Slot] = (),
) -> list[Slot]:
    """The slots the metrics need (from the metric table), one per distinct extractor.

    ``extractors`` maps a slot name to a user module (None: the slot's standard network, built from
    ``weights[slot]`` or the verified cache). Building the standard network resolves its weights,
    so a missing file fails here, before any work. A network already loaded in one of the ``shared``
    slots (another callback's) is reused, not loaded again.
    """
    extractors = extractors or {}
    weights = weights or {}
    slots = []
    for name, (moments, keep) in slot_needs(metrics).items():
        module = extractors.get(name)
        peer = _shared(name, module, shared)
        if peer is not None:
            slots.append(Slot(name, peer.module, peer.info, moments, keep, peer.standard))
        elif module is not None:
            slots.append(make_slot(name, module, moments, keep))
        else:
            slots.append(make_slot(name, SLOTS[name].default(weights.get(name)), moments, keep, standard=True))
    return slots


def extract(slot: Slot, images_uint8: torch.Tensor) -> torch.Tensor:
    """(N, D) features of uint8 images from the slot's extractor, checked against its declared D."""
    feats = run_extractor(slot.module, images_uint8, slot.info.input_range)
    if feats.shape[1] != slot.info.feature_dim:
        raise ValueError(
            f"extractor {slot.info.name} returned {feats.shape[1]} features, declared {slot.info.feature_dim}"
        )
    return feats


@dataclass
class Accumulator:
    """Per-rank accumulation of one sample set over all slots."""

    slots: list[Slot]
    device: torch.device
    moments: dict[str, FeatureMoments] = field(default_factory=dict)
    banks: dict[str, FeatureBank] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for slot in self.slots:
            if slot.moments:
                self.moments[slot.name] = FeatureMoments(slot.info.feature_dim, device=self.device)
            if slot.keep_features:
                self.banks[slot.name] = FeatureBank(slot.info.feature_dim)

    def add(self, images_uint8: torch.Tensor, index: torch.Tensor) -> None:
        """Extract features once per slot and record them under their global sample indices."""
        for slot in self.slots:
            feats = extract(slot, images_uint8)
            if slot.moments:
                self.moments[slot.name].update(feats)
            if slot.keep_features:
                self.banks[slot.name].add(feats.to(torch.float32), index.to(feats.device))

    def discard(self) -> None:
        """Free what was accumulated (an evaluation that will not be scored)."""
        for bank in self.banks.values():
            bank.reset()

    def finish(self, group: Group = None) -> dict[str, Statistics]:
        """Merge across ranks (one all-reduce for all moments, one gather per kept set)."""
        names = list(self.moments)
        flat = [t for n in names for t in (self.moments[n].n, self.moments[n].sum, self.moments[n].outer)]
        reduced = all_reduce_packed(flat, group) if flat else []
        out: dict[str, Statistics] = {
            slot.name: Statistics(metadata={"extractor": slot.info.name}) for slot in self.slots
        }
        for i, name in enumerate(names):
            m = FeatureMoments.from_tensors(*reduced[3 * i : 3 * i + 3])
            out[name].n = m.count
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
    acc = Accumulator(slots, device)
    n_batches = len(range(rank * options.batch_size, num, world * options.batch_size))
    span = [-math.inf, -math.inf]  # [-min, max] of float images, for the range check
    bar = tqdm(total=n_batches, desc=desc, disable=not (progress and rank == 0), leave=False)
    with full_precision():
        with agreed("reading the real data", device):
            for index, images in source.batches(num, options.batch_size, rank, world, options.image_key,
                                                options.transform):  # fmt: skip
                declared = "uint8" if images.dtype == torch.uint8 else options.input_range
                if images.dtype != torch.uint8 and images.numel():
                    span = [max(span[0], -float(images.min())), max(span[1], float(images.max()))]
                acc.add(to_uint8(images, declared, strict=True, source=REAL).to(device), index)
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
) -> GeneratedSet:
    """Sample ``num_samples`` fixed-noise images over all ranks and merge their statistics (collective).

    The generator runs in full precision unless ``sample_autocast`` opts in to autocast; extraction
    always runs in full precision. Non-finite images make the whole set invalid on every rank (agreed
    with one all-reduce), so the caller logs NaN instead of a number computed from part of the samples.
    """
    rank, world = rank_and_world()
    batches = plan(num_samples, batch_size, rank, world)
    grid = None
    bad = False
    acc = Accumulator(slots, device)
    bar = tqdm(total=len(batches), desc="lightning_fid: sampling", disable=not (progress and rank == 0), leave=False)
    with agreed("sampling the generator", device), sampling_precision(sample_autocast, device):
        for batch, images in generate(sampler, module, batches, seed, conditions):
            bar.update(1)
            with full_precision():
                if not bool(torch.isfinite(images).all()):
                    bad = True
                    continue
                u8 = to_uint8(images.detach(), input_range, strict=False)
                if batch.index == 0 and grid_size:
                    grid = image_grid(u8[:grid_size])
                acc.add(u8.to(device), batch.sample_index)
    bar.close()
    with full_precision():
        if any_rank(bad, device):
            acc.discard()
            return GeneratedSet(None, grid)
        return GeneratedSet(acc.finish(), grid)


def dry_run(
    sampler: Sampler, module: nn.Module, slots: list[Slot], *, num_samples: int, seed: int,
    input_range: InputRange, device: torch.device, conditions: Sequence[Any] | None = None,
    sample_autocast: torch.dtype | None = None, range_check: bool = True,
) -> None:  # fmt: skip
    """Run the whole chain once, on this rank only, at ``num_samples`` (use the real batch size, so
    problems a full batch reveals show up): shapes, ranges, extractors. Nothing is communicated.

    Raises ValueError saying what to change.
    """
    try:
        with sampling_precision(sample_autocast, device):
            (_, images), *_ = list(generate(sampler, module, plan(num_samples, num_samples), seed, conditions))
        with full_precision():
            u8 = to_uint8(images.detach(), input_range, strict=True, source=GENERATED)
            if range_check and images.dtype != torch.uint8:
                check_fill(float(images.min()), float(images.max()), input_range, GENERATED)
    except ValueError as exc:
        raise ValueError(f"GenerativeMetrics dry run: {exc}") from exc
    with full_precision():
        for slot in slots:
            extract(slot, u8.to(device))
