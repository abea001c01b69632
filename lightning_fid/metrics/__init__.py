"""Pure metric math (no Lightning import): FID, KID, CMMD and their torchmetrics-style objects."""

from lightning_fid.metrics.cmmd import cmmd
from lightning_fid.metrics.fid import frechet_distance, reference_factor, sqrtm_psd
from lightning_fid.metrics.fid_infinity import fid_infinity
from lightning_fid.metrics.inception_score import inception_score
from lightning_fid.metrics.kid import kid, kid_full
from lightning_fid.metrics.modules import CMMD, FID, KID, DensityCoverage, InceptionScore, PrecisionRecall
from lightning_fid.metrics.prdc import density_coverage, knn_radii, precision_recall

__all__ = [
    "CMMD",
    "FID",
    "KID",
    "DensityCoverage",
    "InceptionScore",
    "PrecisionRecall",
    "cmmd",
    "density_coverage",
    "fid_infinity",
    "frechet_distance",
    "inception_score",
    "kid",
    "kid_full",
    "knn_radii",
    "precision_recall",
    "reference_factor",
    "sqrtm_psd",
]
