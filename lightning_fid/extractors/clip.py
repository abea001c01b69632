"""CLIP ViT-L/14@336px image embeddings for CMMD, preprocessed as the CMMD reference does."""

from __future__ import annotations

import os
import warnings

import torch
from torch_fidelity.feature_extractor_clip import build_model

from lightning_fid.extractors.base import AlwaysEval
from lightning_fid.extractors.inception import load_state_dict_file
from lightning_fid.extractors.resize import pil_bicubic_resize
from lightning_fid.extractors.weights import CLIP_WEIGHTS, WeightsError, resolve_verified

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip_state_dict(path: os.PathLike) -> dict[str, torch.Tensor]:
    """State dict of an OpenAI CLIP file: the TorchScript archive (loaded to CPU) or a plain state dict."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            archive = torch.jit.load(str(path), map_location="cpu")
        return {k: v.detach().clone() for k, v in archive.state_dict().items()}
    except RuntimeError:
        return load_state_dict_file(path)  # not TorchScript: a state dict saved with torch.save


class CLIP(AlwaysEval):
    """L2-normalised CLIP image embeddings (768-d for ViT-L/14@336px), as google-research's CMMD.

    Preprocessing follows the CMMD reference: PIL's bicubic (antialiased) resize of the 8-bit image
    to the model's resolution, reproduced bit-exactly in torch, then [0, 1] and CLIP mean/std. The
    network is torch-fidelity's CLIP visual tower built from the state dict.
    """

    name = "clip-vit-l-14-336px"
    input_range = "uint8"

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        path, self.weights_sha256 = resolve_verified(CLIP_WEIGHTS, weights_path)
        state = load_clip_state_dict(path)
        try:
            self.model = build_model(state, torch.float32)
        except (KeyError, RuntimeError) as exc:
            raise WeightsError(f"{path} is not an OpenAI CLIP checkpoint: {exc}") from exc
        self.resolution = int(self.model.visual.input_resolution)
        self.feature_dim = int(self.model.visual.proj.shape[1])
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.model.eval().requires_grad_(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> normalised float32 (N, 3, R, R)."""
        if images.dtype != torch.uint8:
            raise ValueError(f"CLIP expects uint8 images (use lightning_fid.to_uint8), got {images.dtype}")
        x = pil_bicubic_resize(images, (self.resolution, self.resolution)).to(torch.float32)
        return (x / 255.0 - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> unit-norm float32 (N, D) embeddings."""
        with torch.no_grad():
            emb = self.model.visual(self.preprocess(images)).to(torch.float32)
        return emb / emb.norm(dim=-1, keepdim=True)
