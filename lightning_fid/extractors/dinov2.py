"""DINOv2 ViT-L/14 CLS features (1024-d) for FD-DINOv2, preprocessed as dgm-eval or as EDM2 does.

dgm-eval (Stein et al. 2023, the reference for FD-DINOv2) runs ``torch.hub.load('facebookresearch/
dinov2', 'dinov2_vitl14')`` on PIL images through ``Resize((224, 224), BICUBIC)``, ``ToTensor`` and
ImageNet ``Normalize``, and takes the model's output: the final-norm CLS token. We load Meta's
published checkpoint with ``torch.load(weights_only=True)`` (no torch.hub, no code from the network)
into timm's ViT (``vit_large_patch14_dinov2``'s definition), and reproduce two details bit for bit:

- the resize: ``resize="pil"`` (default) is PIL's bicubic on the 8-bit image (our exact torch port,
  ``pil_bicubic_resize``), as dgm-eval and EDM2's ``resize_mode='pil'``; ``resize="torch"`` is
  EDM2's default ``resize_mode='torch'`` (NVlabs/edm2 calculate_metrics.py, DINOv2Detector):
  ``F.interpolate(x.float(), (224, 224), mode="bicubic", antialias=True)`` on the 0..255 values,
  neither rounded nor clipped. Then, in both modes, ``x / 255``, ``- mean``, ``/ std`` in float32,
  the operations torchvision's ``ToTensor`` / ``Normalize`` (and EDM2) perform;
- the 37 x 37 position embedding of the 518-px checkpoint is resized to the 16 x 16 grid of a 224-px
  input as DINOv2's ``interpolate_pos_encoding`` does (bicubic, no antialias, ``scale_factor=(16 +
  0.1) / 37``), not as timm's loader would (antialiased, by size). It is computed once, at load.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lightning_fid.extractors.base import AlwaysEval
from lightning_fid.extractors.inception import load_state_dict_file
from lightning_fid.extractors.resize import pil_bicubic_resize
from lightning_fid.extractors.weights import DINOV2_WEIGHTS, WeightsError, pin_first_use, resolve_verified

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224  # dgm-eval's Resize((224, 224)), EDM2's size=(224, 224)
#: DINOv2's resize modes: dgm-eval's PIL bicubic ("pil", EDM2's resize_mode='pil') and EDM2's default
#: torch bicubic with antialias ("torch")
RESIZE_MODES = ("pil", "torch")
INTERPOLATE_OFFSET = 0.1  # DINOv2's interpolate_offset (hub default), kept "for backward-compatibility"


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """DINOv2's ``interpolate_pos_encoding`` for a square ``grid`` x ``grid`` patch grid (image size //
    patch size), in float32; ``pos_embed`` itself when the grid already matches, as DINOv2 does."""
    n = pos_embed.shape[1] - 1
    side = int(round(n**0.5))
    if side * side != n:
        raise WeightsError(f"pos_embed has {n} patch positions, not a square grid")
    if side == grid:
        return pos_embed
    pos = pos_embed.float()
    dim = pos.shape[-1]
    scale = float(grid + INTERPOLATE_OFFSET) / side
    patch = F.interpolate(
        pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=(scale, scale),
        mode="bicubic",
        antialias=False,
    )
    if patch.shape[-2:] != (grid, grid):
        raise WeightsError(f"position-embedding interpolation gave {tuple(patch.shape[-2:])}, expected {grid}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat((pos[:, :1], patch), dim=1).to(pos_embed.dtype)


def build_vit(state: dict[str, torch.Tensor], img_size: int = INPUT_SIZE) -> VisionTransformer:
    """timm's DINOv2 ViT for ``img_size`` inputs from a state dict in Meta's format.

    The size (embedding width, depth, patch size, MLP ratio) is read from the state dict; heads are
    64-wide as in every DINOv2 model (16 for ViT-L). The model is built on the meta device and the
    tensors are assigned, so no random initialisation of 300M parameters is wasted.
    """
    try:
        from timm.models import create_model
        from timm.models.vision_transformer import checkpoint_filter_fn
    except ImportError as exc:
        raise ImportError("the DINOv2 extractor needs timm: pip install 'timm>=1.0'") from exc
    try:
        dim = int(state["cls_token"].shape[-1])
        patch = int(state["patch_embed.proj.weight"].shape[-1])
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.norm1\.weight$", k)))
        mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / dim
        state = dict(state)
        state["pos_embed"] = interpolate_pos_embed(state["pos_embed"], img_size // patch)
    except (KeyError, ValueError, AttributeError) as exc:
        raise WeightsError(f"not a DINOv2 backbone state dict (missing or malformed {exc})") from exc
    with torch.device("meta"):
        model = create_model(
            "vit_large_patch14_dinov2",
            pretrained=False,
            img_size=img_size,
            patch_size=patch,
            embed_dim=dim,
            depth=depth,
            num_heads=max(dim // 64, 1),
            mlp_ratio=mlp_ratio,
            init_values=1.0,
            num_classes=0,
        )
    try:
        model.load_state_dict(checkpoint_filter_fn(state, model), strict=True, assign=True)
    except RuntimeError as exc:
        raise WeightsError(f"not a DINOv2 backbone state dict: {exc}") from exc
    return model.eval().requires_grad_(False)


class DINOv2(AlwaysEval):
    """DINOv2 ViT-L/14 CLS embeddings (1024-d), as dgm-eval (``resize="pil"``) or EDM2 (``resize="torch"``)
    computes them for FD-DINOv2.

    uint8 NCHW RGB input of any size: bicubic resize to 224 x 224, [0, 1], ImageNet mean / std,
    final-norm CLS token. Weights: Meta's ``dinov2_vitl14_pretrain.pth`` (``weights_path=``, the
    cache, or a download; ``lightning-fid download dinov2`` prefetches it).

    Args:
        weights_path: the weights file (default: the cache, or a download).
        resize: ``"pil"`` (default): PIL's bicubic on the 8-bit image, exactly as dgm-eval and EDM2's
            ``resize_mode='pil'``; ``"torch"``: EDM2's default ``resize_mode='torch'``, torch's bicubic
            with antialias on float values. EDM2 calls them "almost the same": the same Keys kernel
            (a = -0.5), but PIL rounds each pass to 8 bits and clips, so pixels differ by about 0.3
            levels on average, up to ~1 on smooth images and tens of levels where bicubic overshoots
            (sharp edges, noise). Part of the extractor's name and configuration, so references
            computed one way are never scored against features computed the other.

    Raises:
        ValueError: an unknown ``resize``.
    """

    name = "dinov2-vit-l-14"
    feature_dim = 1024
    input_range = "uint8"

    def __init__(self, weights_path: str | os.PathLike | None = None, resize: str = "pil") -> None:
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"DINOv2(resize={resize!r}); choose from {RESIZE_MODES}")
        self.resize = resize
        self.name = self.identity_name(resize)
        path, self.weights_sha256 = resolve_verified(DINOV2_WEIGHTS, weights_path)
        self.model = build_vit(load_state_dict_file(path))  # its keys and shapes verify the file
        pin_first_use(DINOV2_WEIGHTS, path, self.weights_sha256)
        self.feature_dim = int(self.model.num_features)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def identity_name(resize: str = "pil") -> str:
        """The extractor's name with ``resize``: the class name for dgm-eval's PIL resize (as before
        resize modes existed), ``...-torch-resize`` for EDM2's."""
        return DINOv2.name if resize == "pil" else f"{DINOv2.name}-{resize}-resize"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> normalised float32 (N, 3, 224, 224), as dgm-eval's transform (``"pil"``)
        or EDM2's DINOv2Detector (``"torch"``)."""
        if images.dtype != torch.uint8:
            raise ValueError(f"DINOv2 expects uint8 images (use lightning_fid.to_uint8), got {images.dtype}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"DINOv2 expects (N, 3, H, W) RGB images, got shape {tuple(images.shape)}")
        if self.resize == "torch":  # EDM2: float 0..255, bicubic with antialias, no rounding or clipping
            size = (INPUT_SIZE, INPUT_SIZE)
            x = F.interpolate(images.to(torch.float32), size=size, mode="bicubic", antialias=True)
        else:
            x = pil_bicubic_resize(images, (INPUT_SIZE, INPUT_SIZE)).to(torch.float32)
        x = x / 255.0
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 (N, 1024) CLS features."""
        with torch.no_grad():
            return self.model(self.preprocess(images)).to(torch.float32)
