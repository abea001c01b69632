"""lightning_fid: exact, distributed FID / KID / CMMD and more for PyTorch Lightning, measured while training.

The engine (:mod:`lightning_fid.engine`), the metrics (:mod:`lightning_fid.metrics`) and the networks
(:mod:`lightning_fid.extractors`) never import Lightning; the callbacks (:mod:`lightning_fid.callbacks`)
are imported on first use, so ``import lightning_fid`` works where Lightning is not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning_fid.engine import (
    Evaluator,
    FeatureBank,
    FeatureMoments,
    LabelPolicy,
    RealData,
    Reference,
    Statistics,
    format_card,
    load_statistics,
    resolve_reference,
    to_uint8,
)
from lightning_fid.extractors import CLIP, DINOv2, InceptionV3
from lightning_fid.metrics import (
    CMMD,
    FID,
    KID,
    METRICS,
    SFID,
    DensityCoverage,
    FDDINOv2,
    FIDInfinity,
    InceptionScore,
    IntraFID,
    Metric,
    Needs,
    PerClassFID,
    PrecisionRecall,
    cmmd,
    frechet_distance,
    kid,
    kid_full,
    reference_factor,
    sqrtm_psd,
)
from lightning_fid.protocols import PROTOCOLS, Protocol

__version__ = "0.2.0"

_LAZY = {
    "GenerativeMetrics": "lightning_fid.callbacks",
    "FreshEarlyStopping": "lightning_fid.callbacks",
    "NoiseAwareCheckpoint": "lightning_fid.callbacks",
}


def __getattr__(name: str) -> Any:
    """The Lightning callbacks, imported on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_fid' has no attribute {name!r}")


__all__ = [
    "CLIP",
    "CMMD",
    "FID",
    "KID",
    "METRICS",
    "SFID",
    "DINOv2",
    "DensityCoverage",
    "Evaluator",
    "FDDINOv2",
    "FIDInfinity",
    "FeatureBank",
    "FeatureMoments",
    "FreshEarlyStopping",
    "GenerativeMetrics",
    "InceptionScore",
    "InceptionV3",
    "IntraFID",
    "LabelPolicy",
    "Metric",
    "Needs",
    "NoiseAwareCheckpoint",
    "PROTOCOLS",
    "PerClassFID",
    "PrecisionRecall",
    "Protocol",
    "RealData",
    "Reference",
    "Statistics",
    "cmmd",
    "format_card",
    "frechet_distance",
    "kid",
    "kid_full",
    "load_statistics",
    "reference_factor",
    "resolve_reference",
    "sqrtm_psd",
    "to_uint8",
]
