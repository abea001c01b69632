"""lightning_fid: exact, distributed FID / KID / CMMD for PyTorch Lightning, measured while training."""

from lightning_fid.callback import GenerativeMetrics
from lightning_fid.extractors import CLIP, InceptionV3
from lightning_fid.images import to_uint8
from lightning_fid.metrics import (
    CMMD,
    FID,
    KID,
    cmmd,
    frechet_distance,
    kid,
    kid_full,
    reference_factor,
    sqrtm_psd,
)
from lightning_fid.monitors import FreshEarlyStopping
from lightning_fid.real import RealOptions
from lightning_fid.reference import Reference, resolve_reference
from lightning_fid.registry import METRICS, MetricOptions
from lightning_fid.stats import FeatureBank, FeatureMoments, Statistics, load_statistics

__version__ = "0.1.0"

__all__ = [
    "CLIP",
    "CMMD",
    "FID",
    "KID",
    "FeatureBank",
    "FeatureMoments",
    "FreshEarlyStopping",
    "GenerativeMetrics",
    "InceptionV3",
    "METRICS",
    "MetricOptions",
    "RealOptions",
    "Reference",
    "Statistics",
    "cmmd",
    "frechet_distance",
    "kid",
    "kid_full",
    "load_statistics",
    "reference_factor",
    "resolve_reference",
    "sqrtm_psd",
    "to_uint8",
]
