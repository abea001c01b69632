"""Metrics: each one class in one file (its options, keys, needs, checks and compute), their pure math
functions, and the names ``metrics=`` accepts. No Lightning import."""

from lightning_fid.metrics._jackknife import Estimate
from lightning_fid.metrics.base import Context, Metric, Needs, RunInfo
from lightning_fid.metrics.catalog import METRICS, resolve_metrics
from lightning_fid.metrics.cmmd import CMMD, cmmd
from lightning_fid.metrics.density_coverage import DensityCoverage
from lightning_fid.metrics.fd_dinov2 import FDDINOv2
from lightning_fid.metrics.fid import FID, frechet_distance, frechet_estimate, reference_factor, sqrtm_psd
from lightning_fid.metrics.fid_infinity import FIDInfinity, fid_infinity
from lightning_fid.metrics.inception_score import InceptionScore, inception_score
from lightning_fid.metrics.intra_fid import IntraFID
from lightning_fid.metrics.kid import KID, kid, kid_full
from lightning_fid.metrics.per_class_fid import PerClassFID
from lightning_fid.metrics.prdc import density_coverage, knn_radii, precision_recall
from lightning_fid.metrics.precision_recall import PrecisionRecall
from lightning_fid.metrics.sfid import SFID

__all__ = [
    "CMMD",
    "FID",
    "KID",
    "METRICS",
    "SFID",
    "Context",
    "DensityCoverage",
    "Estimate",
    "FDDINOv2",
    "FIDInfinity",
    "InceptionScore",
    "IntraFID",
    "Metric",
    "Needs",
    "PerClassFID",
    "PrecisionRecall",
    "RunInfo",
    "cmmd",
    "density_coverage",
    "fid_infinity",
    "frechet_distance",
    "frechet_estimate",
    "inception_score",
    "kid",
    "kid_full",
    "knn_radii",
    "precision_recall",
    "reference_factor",
    "resolve_metrics",
    "sqrtm_psd",
]
