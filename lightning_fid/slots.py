"""Extractor slots: which networks an evaluation runs and what each one's features feed.

A slot is one extractor output (Inception pool features, Inception logits, CLIP embeddings, ...)
and the statistics the metric table asks of it: float64 moments, kept features, per-class moments.
Slots that share a network share its forward pass (:func:`extract` with a per-batch ``computed``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_fid.extractors.base import ExtractorInfo, Frozen, describe, forward_extractor, select_output
from lightning_fid.registry import SLOTS, per_class_slots, slot_needs


@dataclass
class Slot:
    """One extractor and what its features feed: moments (FID) and/or kept features (KID, CMMD)."""

    name: str  # a key of registry.SLOTS
    module: nn.Module
    info: ExtractorInfo
    moments: bool
    keep_features: bool
    standard: bool = False  # the slot's standard network (built from the published weights)
    output: int = 0  # which output of a multi-output extractor (Inception: 0 pool features, 1 logits)
    classes: int = 0  # number of classes whose moments are kept apart (per-class FID), 0: none


def make_slot(name: str, module: nn.Module, moments: bool, keep_features: bool, standard: bool = False) -> Slot:
    """Wrap ``module`` frozen and read its self-description (one probe pass if it declares no dim)."""
    frozen = module if isinstance(module, Frozen) else Frozen(module)
    return Slot(name, frozen, describe(frozen), moments, keep_features, standard)


def _reusable(name: str, module: nn.Module | None, slots: Sequence[Slot]) -> Slot | None:
    """A slot whose network serves ``name`` too: the same user module, or the same standard network
    with the head ``name`` reads (Inception built with its logits head serves IS as well)."""
    spec = SLOTS[name]
    for slot in slots:
        if module is not None and slot.module.module is module:
            return slot
        if module is None and slot.standard and SLOTS[slot.name].weights == spec.weights:
            if spec.output == 0 or getattr(slot.module.module, "logits", False):
                return slot
    return None


def _on(name: str, network: Slot, moments: bool, keep: bool) -> Slot:
    """A slot for ``name`` on ``network``'s extractor, described for the output ``name`` reads."""
    spec = SLOTS[name]
    info = network.info
    if spec.output != network.output:
        base = describe(network.module)
        info = base if spec.output == 0 else ExtractorInfo(f"{base.name}-{name}", spec.dim, base.input_range,
                                                            base.fingerprint, base.config)  # fmt: skip
    return Slot(name, network.module, info, moments, keep, network.standard, spec.output)


def build_slots(
    metrics: Iterable[str],
    extractors: Mapping[str, nn.Module | None] | None = None,
    weights: Mapping[str, Any] | None = None,
    shared: Sequence[Slot] = (),
    classes: int = 0,
) -> list[Slot]:
    """The slots the metrics need (from the metric table), one network per distinct extractor;
    ``classes`` is the number of classes for slots that per-class metrics read.

    ``extractors`` maps a slot name to a user module (None: the slot's standard network, built from
    ``weights[slot]`` or the verified cache). Building a standard network resolves its weights, so a
    missing file fails here, before any work. Inception serves FID/KID features and IS logits from
    one forward pass. A network already loaded in a ``shared`` slot (another callback's) is reused.
    """
    extractors = extractors or {}
    weights = weights or {}
    needs = slot_needs(metrics)
    want_logits = "logits" in needs and extractors.get("features") is None
    slots: list[Slot] = []
    for name, (moments, keep) in needs.items():
        module = extractors.get(name)
        network = _reusable(name, module, slots + list(shared))
        if network is None:
            spec = SLOTS[name]
            standard = module is None
            if standard:
                module = spec.default(weights.get(name), logits=want_logits and spec.weights == "inception")
            network = make_slot(name, module, moments, keep, standard=standard)
        slots.append(_on(name, network, moments, keep))
        slots[-1].classes = classes if name in per_class_slots(metrics) else 0
    return slots


def extract(slot: Slot, images_uint8: torch.Tensor, computed: dict[int, Any] | None = None) -> torch.Tensor:
    """(N, D) features of uint8 images from the slot's extractor, checked against its declared D.
    ``computed`` holds this batch's raw outputs per network, so a shared network runs once."""
    computed = {} if computed is None else computed
    if id(slot.module) not in computed:
        computed[id(slot.module)] = forward_extractor(slot.module, images_uint8, slot.info.input_range)
    feats = select_output(computed[id(slot.module)], slot.output, slot.module, images_uint8.shape[0])
    if feats.shape[1] != slot.info.feature_dim:
        raise ValueError(
            f"extractor {slot.info.name} returned {feats.shape[1]} features, declared {slot.info.feature_dim}"
        )
    return feats
