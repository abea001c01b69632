"""Extractor slots: which networks an evaluation runs and what each one's features feed.

A slot is one output of one network (Inception pool features, Inception logits, sFID's spatial
Inception features, CLIP embeddings, a user's encoder) and the statistics the metrics ask of it:
float64 moments, kept features, per-class moments. Metrics that read the same output of the same
network share a slot; slots of one network share its forward pass (:func:`extract` with a per-batch
``computed``). Standard networks come from one process-wide cache (:mod:`lightning_fid.engine._networks`),
so callbacks never look for each other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_fid.engine._networks import OUTPUT_DIMS, standard_network
from lightning_fid.extractors.base import ExtractorInfo, Frozen, describe, forward_extractor, select_output
from lightning_fid.metrics.base import OUTPUTS, Metric


@dataclass
class Slot:
    """One network output and what its features feed: moments (FID), kept features (KID, CMMD),
    per-class moments (``classes`` > 0)."""

    name: str  # unique within an evaluation, safe in file names: "inception", "inception-logits", "clip", ...
    module: Frozen
    info: ExtractorInfo
    moments: bool = False
    keep_features: bool = False
    standard: bool = False  # a standard network built from published weights
    output: int = 0  # which output of a multi-output network (Inception: 0 pool features, 1 logits, 2 spatial)
    classes: int = 0  # number of classes whose moments are kept apart (per-class FID), 0: none


def make_slot(name: str, module: nn.Module, moments: bool, keep_features: bool, standard: bool = False) -> Slot:
    """Wrap ``module`` frozen and read its self-description (one probe pass if it declares no dim)."""
    frozen = module if isinstance(module, Frozen) else Frozen(module)
    return Slot(name, frozen, describe(frozen), moments, keep_features, standard)


def _outputs(module: nn.Module) -> tuple[str, ...]:
    """The named outputs a network declares (``outputs``; InceptionV3 with ``logits=True, spatial=True``:
    features, logits and spatial), else its single output, ``"features"``."""
    inner = module.module if isinstance(module, Frozen) else module
    return tuple(getattr(inner, "outputs", ("features",)))


def _network(
    metric: Metric,
    default_extractor: nn.Module | None,
    weights: Mapping[str, Any],
    options: Mapping[str, Mapping[str, Any]],
) -> tuple[nn.Module, int, bool]:
    """The network ``metric`` reads, which of its outputs, and whether it is a standard one."""
    needs = metric.needs
    if metric.extractor is not None:  # a single-output network serves any need (a classifier's logits for IS)
        outputs = _outputs(metric.extractor)
        return metric.extractor, outputs.index(needs.output) if needs.output in outputs else 0, False
    if default_extractor is not None and needs.network == "inception" and needs.output in _outputs(default_extractor):
        return default_extractor, _outputs(default_extractor).index(needs.output), False
    try:
        network = standard_network(needs.network, weights.get(needs.network), **options.get(needs.network, {}))
        return network, OUTPUTS[needs.output], True
    except Exception as exc:
        if default_extractor is not None and needs.network == "inception":
            raise type(exc)(
                f"{metric!r} reads Inception-v3's {needs.output}, which feature_extractor= does not provide (pass "
                f"{type(metric).__name__}(extractor=...) to use your own network, or feature_extractor="
                f"InceptionV3(weights_path=..., logits=True, spatial=True) for all three): {exc}"
            ) from exc
        raise


def _suffix(output: str) -> str:
    """What an output adds to its network's name: nothing for the features, "-logits", "-spatial"."""
    return "" if output == "features" else f"-{output}"


def _slot_name(info: ExtractorInfo, standard: bool, network: str, output: str, taken: set[str]) -> str:
    if standard:
        base = network + _suffix(output)
    else:  # the output's own name ("...-logits" for a second output)
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", info.name) or "extractor"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def standard_slot_name(metric: Metric) -> str:
    """The slot name ``metric`` reads when it runs on its standard network (statistics files, the CLI):
    "inception", "inception-logits" (IS), "inception-spatial" (sFID), "clip", "dinov2"."""
    return metric.needs.network + _suffix(metric.needs.output)


def _output_info(info: ExtractorInfo, module: nn.Module, output: str) -> ExtractorInfo:
    """The self-description of one named output of a network: its name gets the output's suffix, its
    dimension is the network's ``output_dims`` entry or the standard one (logits 1008, spatial 2023)."""
    if output == "features":
        return info
    inner = module.module if isinstance(module, Frozen) else module
    dim = dict(getattr(inner, "output_dims", {})).get(output, OUTPUT_DIMS.get(output))
    if dim is None:
        raise ValueError(f"{type(inner).__name__} declares an output {output!r} but not its dimension (output_dims)")
    return ExtractorInfo(f"{info.name}{_suffix(output)}", int(dim), info.input_range, info.fingerprint, info.config)


def build_slots(
    metrics: Sequence[Metric],
    default_extractor: nn.Module | None = None,
    weights: Mapping[str, Any] | None = None,
    classes: int = 0,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[list[Slot], list[str]]:
    """The slots ``metrics`` need, and the name of the slot each metric reads (in order).

    ``default_extractor`` replaces Inception's pool features for metrics given no ``extractor`` of
    their own; ``weights`` maps a standard network ("inception", "clip", "dinov2") to an explicit
    weights file. Building a standard network resolves its weights, so a missing file fails here,
    before any work. ``classes`` is the number of classes of per-class metrics' slots. ``options`` maps
    a standard network to its constructor options (``{"dinov2": {"resize": "torch"}}``: EDM2's resize).
    """
    weights, options = weights or {}, options or {}
    slots: dict[tuple[int, int], Slot] = {}
    described: dict[int, ExtractorInfo] = {}
    slot_of: list[str] = []
    for metric in metrics:
        module, output, standard = _network(metric, default_extractor, weights, options)
        frozen = module if isinstance(module, Frozen) else Frozen(module)
        if id(module) not in described:
            described[id(module)] = describe(frozen)
        slot = slots.get((id(module), output))
        if slot is None:
            named = metric.needs.output if standard else _outputs(module)[output]
            info = _output_info(described[id(module)], module, named)
            name = _slot_name(info, standard, metric.needs.network, named, {s.name for s in slots.values()})
            slot = slots[(id(module), output)] = Slot(name, frozen, info, standard=standard, output=output)
        slot.moments |= metric.needs.moments
        slot.keep_features |= metric.needs.features
        if metric.needs.per_class:
            slot.classes = classes
        slot_of.append(slot.name)
    _share_wrappers(list(slots.values()))
    return list(slots.values()), slot_of


def _share_wrappers(slots: list[Slot]) -> None:
    """Slots of one network hold one wrapper, so :func:`extract` runs it once per batch."""
    first: dict[int, Frozen] = {}
    for slot in slots:
        slot.module = first.setdefault(id(slot.module.module), slot.module)


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
