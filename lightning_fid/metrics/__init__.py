"""Pure metric math (no Lightning import): FID, KID, CMMD and their torchmetrics-style objects."""

from lightning_fid.metrics.cmmd import cmmd
from lightning_fid.metrics.fid import frechet_distance, reference_factor, sqrtm_psd
from lightning_fid.metrics.kid import kid, kid_full
from lightning_fid.metrics.modules import CMMD, FID, KID

__all__ = ["CMMD", "FID", "KID", "cmmd", "frechet_distance", "kid", "kid_full", "reference_factor", "sqrtm_psd"]
