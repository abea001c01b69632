"""The protocol card: everything that determines a logged number, as one JSON-able dict.

Metric and options, extractor and its weights' SHA-256, preprocessing (resize, normalisation,
quantisation), generated and real sample counts, the reference's identity, the label policy, the
seed(s), the protocol and what it is comparable with (and every deviation from it), and the versions
of the libraries that compute it. The callback logs it once per run to every logger, stores it in
its history file and its checkpoint state, and warns when a resumed run's card differs; the CLI
prints it with ``--json``. No Lightning here.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

from lightning_fid.engine._labels import describe_conditions
from lightning_fid.engine._slots import Slot
from lightning_fid.extractors.base import Frozen
from lightning_fid.metrics.base import Metric
from lightning_fid.protocols import Protocol

#: libraries whose version can move a number (extractor code and numerics)
LIBRARIES = ("lightning_fid", "torch", "torchvision", "numpy", "scipy", "torch-fidelity", "timm", "pillow")

QUANTISATION = (
    "float images in input_range -> uint8 as a PNG writer: floor((x - low) / (high - low) * 255 + 0.5), "
    "clamped to [0, 255]; uint8 images as given"
)


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _plain(value: Any) -> Any:
    """A JSON-able form of an option value (tuples as lists, anything else unusual as its repr)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def preprocessing(module: Any) -> str:
    """How a network reads uint8 images: its ``preprocessing`` attribute or its preprocess
    method's first docstring line, with its options (``preprocess``, ``resize``) named."""
    inner = module.module if isinstance(module, Frozen) else module
    text = getattr(inner, "preprocessing", None)
    if not isinstance(text, str):
        method = getattr(inner, "preprocess", None)
        doc = getattr(method, "__doc__", None) if callable(method) else None
        text = (doc or type(inner).__doc__ or type(inner).__name__).strip().splitlines()[0]
    options = {
        k: getattr(inner, k)
        for k in ("preprocess", "resize", "resize_mode")
        if isinstance(getattr(inner, k, None), str)
    }
    return text + "".join(f"; {k}={v!r}" for k, v in options.items())


def extractor_entry(slot: Slot) -> dict[str, Any]:
    """One slot's card entry: network, output, weights SHA-256, configuration hash, preprocessing."""
    inner = slot.module.module if isinstance(slot.module, Frozen) else slot.module
    sha = getattr(inner, "weights_sha256", None)
    return {
        "network": slot.info.name,
        "standard": slot.standard,
        "feature_dim": slot.info.feature_dim,
        "weights_sha256": sha if isinstance(sha, str) else None,
        "weights_fingerprint": slot.info.fingerprint,
        "config": slot.info.config,
        "preprocessing": preprocessing(slot.module),
    }


def reference_entry(key: str | None, stats: Mapping[str, Any] | None) -> dict[str, Any]:
    """The reference's identity (cache key: data fingerprint, reading and networks; or the file's
    hash) and, per slot, its real sample count and simple metadata."""
    slots = {}
    for name, entry in (stats or {}).items():
        simple = {k: v for k, v in entry.metadata.items() if isinstance(v, (str, int, float, bool))}
        slots[name] = {"n_real": entry.n, **simple}
    return {"identity": key, "slots": slots}


def protocol_card(
    *,
    protocol: Protocol,
    deviations: Sequence[str],
    metrics: Iterable[Metric],
    slot_of: Sequence[str],
    slots: Iterable[Slot],
    reference_key: str | None,
    reference_stats: Mapping[str, Any] | None,
    generated: Mapping[str, Any],
    labels: str,
) -> dict[str, Any]:
    """The card of one configuration (see the module docstring).

    Args:
        protocol: the protocol it starts from.
        deviations: how it departs from the protocol (:func:`lightning_fid.protocols.deviations`).
        metrics: the metric objects; ``slot_of`` the slot each one reads.
        slots: the extractor slots.
        reference_key: the resolved reference's identity; ``reference_stats`` its statistics per slot.
        generated: what determines the generated side (sample counts, seeds, batch size, autocast).
        labels: the label policy's description.
    """
    metrics = list(metrics)
    return {
        "protocol": protocol.name,
        "comparable_with": protocol.comparable_with,
        "deviations": list(deviations),
        "metrics": [
            {"key": m.key, "metric": type(m).__name__, "options": _plain(m.options()), "slot": slot}
            for m, slot in zip(metrics, slot_of)
        ],
        "extractors": {slot.name: extractor_entry(slot) for slot in slots},
        "quantisation": QUANTISATION,
        "generated": _plain(dict(generated)),
        "labels": labels,
        "reference": reference_entry(reference_key, reference_stats),
        "versions": _versions(),
    }


def flatten(card: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``card`` as one level of dotted keys (lists of dicts indexed), for loggers and comparisons."""
    out: dict[str, Any] = {}
    for key, value in card.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                out.update(flatten(item, f"{name}.{i}.") if isinstance(item, Mapping) else {f"{name}.{i}": item})
        else:
            out[name] = value
    return out


def card_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The dotted fields where two cards differ, sorted."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


#: the reference file each named protocol's papers score against
EXPECTED_FORMAT = {"adm": "adm", "edm2": "edm2"}


def reference_deviations(protocol: Protocol, reference: Any) -> list[str]:
    """A named protocol scored against another reference than its papers' kind of file."""
    expected = EXPECTED_FORMAT.get(protocol.name)
    found = (getattr(reference, "source", None) or {}).get("format") if reference is not None else None
    if expected is None or found is None or found == expected:
        return []
    return [
        f"reference is {found!r} data, not {protocol.reference}: values compare with the papers' only if it "
        "holds the same images"
    ]


def evaluator_card(evaluator: Any, final_num_samples: int | None = None, final_seeds: int = 1) -> dict[str, Any]:
    """The card of a built :class:`~lightning_fid.engine.Evaluator` (its reference once prepared)."""
    ref = evaluator.reference
    generated = {
        "num_samples": evaluator.num_samples,
        "final_num_samples": final_num_samples,
        "final_seeds": [evaluator.seed + i for i in range(final_seeds)] if final_num_samples else None,
        "seed": evaluator.seed,
        "batch_size": evaluator.batch_size,
        "sample_autocast": str(evaluator.sample_autocast) if evaluator.sample_autocast else None,
        "input_range": evaluator.input_range,
    }
    return protocol_card(
        protocol=evaluator.protocol,
        deviations=[*evaluator.deviations, *reference_deviations(evaluator.protocol, ref)],
        metrics=evaluator.metrics,
        slot_of=evaluator.scorer.slot_of,
        slots=evaluator.slots,
        reference_key=ref.key if ref is not None else None,
        reference_stats=ref.stats if ref is not None else None,
        generated=generated,
        labels=describe_conditions(evaluator.conditions, evaluator.policy),
    )


def format_card(card: Mapping[str, Any]) -> str:
    """A protocol card as a few readable lines (for logs, notebooks and the digits example)."""
    generated = card.get("generated", {})
    lines = [
        f"protocol: {card['protocol']} — comparable with {card.get('comparable_with') or 'its own runs only'}",
        "deviations: " + ("; ".join(card.get("deviations", [])) or "none"),
        "metrics: " + ", ".join(f"{m['key']}={m['metric']}{m['options'] or ''}" for m in card.get("metrics", [])),
    ]
    for name, entry in card.get("extractors", {}).items():
        sha = entry.get("weights_sha256") or f"live weights {entry.get('weights_fingerprint', '')[:16]}"
        lines.append(
            f"extractor {name}: {entry['network']} ({entry['feature_dim']}-d), sha256 {sha}; {entry['preprocessing']}"
        )
    seeds = generated.get("final_seeds")
    lines.append(
        f"generated: {generated.get('num_samples')} samples, seed {generated.get('seed')}, batch {generated.get('batch_size')}"
        + (f"; final: {generated.get('final_num_samples')} samples, seeds {seeds}" if seeds else "")
    )
    reference = card.get("reference", {})
    counts = ", ".join(f"{k}: {v.get('n_real')}" for k, v in reference.get("slots", {}).items())
    lines.append(f"reference: {reference.get('identity')} (real samples {counts or 'not resolved yet'})")
    lines.append(f"labels: {card.get('labels')}")
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in card.get("versions", {}).items()))
    return "\n".join(lines)
