"""One evaluation, free of Lightning: extract features once per extractor, accumulate statistics
across ranks, and compute FID / KID / CMMD exactly. The callback is a thin layer over this."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lightning_fid.distributed import FeatureBank, all_reduce_packed, rank_and_world
from lightning_fid.extractors.base import ExtractorInfo, Frozen, describe, run_extractor
from lightning_fid.images import InputRange, to_uint8
from lightning_fid.metrics.cmmd import cmmd
from lightning_fid.metrics.fid import frechet_distance, reference_factor, warn_if_rank_deficient
from lightning_fid.metrics.kid import kid
from lightning_fid.real import RealSource
from lightning_fid.stats import FeatureMoments

KNOWN_METRICS = ("fid", "kid", "cmmd")


@dataclass
class Slot:
    """One extractor and what its features feed: moments (FID) and/or kept features (KID, CMMD)."""

    name: str  # "features" (FID/KID extractor) or "cmmd"
    module: nn.Module
    info: ExtractorInfo
    moments: bool
    keep_features: bool


def make_slot(name: str, module: nn.Module, moments: bool, keep_features: bool) -> Slot:
    """Wrap ``module`` frozen and read its self-description (one probe pass if it declares no dim)."""
    frozen = module if isinstance(module, Frozen) else Frozen(module)
    return Slot(name, frozen, describe(frozen), moments, keep_features)


@dataclass
class SetStats:
    """A sample set's statistics for one slot, identical on every rank after ``finish``."""

    mu: torch.Tensor | None = None
    sigma: torch.Tensor | None = None
    n: int = 0
    features: torch.Tensor | None = None
    factor: torch.Tensor | None = None  # reference only: cached F with F F^T = sigma

    @property
    def dim(self) -> int:
        """Feature dimension of these statistics."""
        return int(self.mu.shape[0] if self.mu is not None else self.features.shape[1])

    def to_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"n": np.asarray(self.n)}
        if self.mu is not None:
            out.update(mu=self.mu.cpu().numpy(), sigma=self.sigma.cpu().numpy())
        if self.features is not None:
            out["features"] = self.features.cpu().numpy()
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], device: torch.device) -> SetStats:
        stats = cls(n=int(arrays["n"]))
        if "mu" in arrays:
            stats.mu = torch.from_numpy(arrays["mu"]).to(device, torch.float64)
            stats.sigma = torch.from_numpy(arrays["sigma"]).to(device, torch.float64)
        if "features" in arrays:
            stats.features = torch.from_numpy(arrays["features"]).to(device)
        return stats


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
            feats = run_extractor(slot.module, images_uint8, slot.info.input_range)
            if feats.shape[1] != slot.info.feature_dim:
                raise ValueError(
                    f"extractor {slot.info.name} returned {feats.shape[1]} features, declared {slot.info.feature_dim}"
                )
            if slot.moments:
                self.moments[slot.name].update(feats)
            if slot.keep_features:
                self.banks[slot.name].add(feats.to(torch.float32), index.to(feats.device))

    def finish(self, group=None) -> dict[str, SetStats]:
        """Merge across ranks (one all-reduce for all moments, one gather per kept set)."""
        names = list(self.moments)
        flat = [t for n in names for t in (self.moments[n].n, self.moments[n].sum, self.moments[n].outer)]
        reduced = all_reduce_packed(flat, group) if flat else []
        out: dict[str, SetStats] = {slot.name: SetStats() for slot in self.slots}
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


def collect(
    source: RealSource,
    num: int,
    slots: list[Slot],
    batch_size: int,
    device: torch.device,
    input_range: InputRange,
    image_key=None,
    transform=None,
    progress: bool = False,
    desc: str = "lightning_fid: real statistics",
) -> dict[str, SetStats]:
    """Statistics of the first ``num`` images of ``source``, shared over ranks (a collective call)."""
    rank, world = rank_and_world()
    acc = Accumulator(slots, device)
    n_batches = len(range(rank * batch_size, num, world * batch_size))
    with tqdm(total=n_batches, desc=desc, disable=not (progress and rank == 0), leave=False) as bar:
        for index, images in source.batches(num, batch_size, rank, world, image_key, transform):
            u8 = to_uint8(images, "uint8" if images.dtype == torch.uint8 else input_range, strict=True)
            acc.add(u8.to(device), index)
            bar.update(1)
    return acc.finish()


def prepare_reference(stats: dict[str, SetStats], fid_slot: str | None) -> None:
    """Compute the FID reference factor once per run (the expensive half of FID)."""
    if fid_slot is not None and stats[fid_slot].sigma is not None:
        stats[fid_slot].factor = reference_factor(stats[fid_slot].sigma)


def compute_metrics(
    metrics: tuple[str, ...],
    real: dict[str, SetStats],
    fake: dict[str, SetStats],
    kid_subsets: int,
    kid_subset_size: int,
    kid_seed: int,
    cmmd_sigma: float,
    cmmd_scale: float,
    group=None,
) -> dict[str, float]:
    """FID / KID (mean, std) / CMMD from merged statistics; identical on every rank."""
    values: dict[str, float] = {}
    if "fid" in metrics:
        r, f = real["features"], fake["features"]
        warn_if_rank_deficient(f.n, f.mu.shape[0], "generated samples")
        values["fid"] = frechet_distance(r.mu, r.sigma, f.mu, f.sigma, sigma1_sqrt=r.factor)
    if "kid" in metrics:
        mean, std = kid(
            real["features"].features, fake["features"].features, kid_subsets, kid_subset_size, kid_seed,
            distributed=True, group=group,
        )  # fmt: skip
        values["kid"], values["kid_std"] = mean, std
    if "cmmd" in metrics:
        values["cmmd"] = cmmd(
            real["cmmd"].features, fake["cmmd"].features, cmmd_sigma, cmmd_scale, distributed=True, group=group
        )
    return values


def nan_metrics(metrics: tuple[str, ...]) -> dict[str, float]:
    """The values logged when generated images are not finite: NaN, never a made-up number."""
    out = {m: math.nan for m in metrics}
    if "kid" in metrics:
        out["kid_std"] = math.nan
    return out


def any_rank(flag: bool, device: torch.device, group=None) -> bool:
    """True if ``flag`` is set on any rank (one tiny all-reduce; every rank must call it)."""
    (total,) = all_reduce_packed([torch.tensor([float(flag)], device=device)], group)
    return bool(total.item() > 0)
