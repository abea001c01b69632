"""FD-DINOv2 (Stein et al. 2023): the Fréchet distance on DINOv2 ViT-L/14 CLS features."""

from __future__ import annotations

from lightning_fid.metrics.base import Needs
from lightning_fid.metrics.fid import FID


class FDDINOv2(FID):
    """Fréchet distance on DINOv2 ViT-L/14 features (:class:`~lightning_fid.extractors.DINOv2`,
    ``pip install timm``), as dgm-eval and EDM2 compute it. Logs ``fd_dinov2``.

    Args:
        key: the logged key (default ``"fd_dinov2"``).
        extractor: a network to use instead of DINOv2.
    """

    name = "fd_dinov2"
    needs = Needs(network="dinov2", moments=True)
