"""Feature extractors: TF-exact Inception-v3 (FID/KID), CLIP (CMMD), or any nn.Module."""

from lightning_fid.extractors.base import ExtractorInfo, FeatureExtractor, Frozen, describe, run_extractor
from lightning_fid.extractors.clip import CLIP
from lightning_fid.extractors.dinov2 import DINOv2
from lightning_fid.extractors.inception import InceptionV3
from lightning_fid.extractors.weights import (
    CLIP_WEIGHTS,
    DINOV2_WEIGHTS,
    INCEPTION_WEIGHTS,
    WeightsError,
    WeightsSpec,
    cache_dir,
    download,
    resolve_weights,
)

__all__ = [
    "CLIP",
    "CLIP_WEIGHTS",
    "DINOV2_WEIGHTS",
    "DINOv2",
    "INCEPTION_WEIGHTS",
    "ExtractorInfo",
    "FeatureExtractor",
    "Frozen",
    "InceptionV3",
    "WeightsError",
    "WeightsSpec",
    "cache_dir",
    "describe",
    "download",
    "resolve_weights",
    "run_extractor",
]
