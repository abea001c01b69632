"""TF-exact Inception-v3 pool3 features (FID / KID), via torch-fidelity's extractor."""

from __future__ import annotations

import os
from unittest import mock

import torch
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

from lightning_fid.extractors.base import AlwaysEval
from lightning_fid.extractors.weights import INCEPTION_WEIGHTS, WeightsError, resolve_verified


def load_state_dict_file(path: os.PathLike) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` to CPU, with an error that names the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot load weights from {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


class InceptionV3(AlwaysEval):
    """2048-d pool3 features of the TF-ported Inception-v3 (``inception-2015-12-05``).

    This is torch-fidelity's ``FeatureExtractorInceptionV3`` (the network torchmetrics also uses):
    uint8 NCHW RGB input of any size, TF1-compatible bilinear resize to 299, (x - 128) / 128.
    Weights are resolved by :func:`resolve_weights` and loaded with ``weights_only=True``.
    """

    name = "inception-v3-tf-2015-12-05"
    feature_dim = 2048
    input_range = "uint8"

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        path, self.weights_sha256 = resolve_verified(INCEPTION_WEIGHTS, weights_path)
        state = load_state_dict_file(path)
        # torch-fidelity's constructor fetches its state dict through this module-level loader (and
        # reads explicit paths with weights_only=False); hand it the dict we loaded safely instead.
        with mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *a, **k: state):
            try:
                self.net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
            except RuntimeError as exc:  # wrong keys or shapes
                raise WeightsError(f"{path} is not an Inception-v3 FID state dict: {exc}") from exc
        self.net.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 (N, 2048)."""
        if images.dtype != torch.uint8:
            raise ValueError(f"InceptionV3 expects uint8 images (use lightning_fid.to_uint8), got {images.dtype}")
        with torch.no_grad():
            return self.net(images)[0]
