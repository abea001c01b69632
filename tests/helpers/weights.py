"""Random weights in exactly the published formats (same keys, shapes and container).

Real weights cannot be downloaded here, so tests write random ones and load them through the same
code path as the published files: a torch.save'd state dict for torch-fidelity's Inception, and an
OpenAI-style TorchScript archive for CLIP.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn
from torch_fidelity.feature_extractor_clip import LayerNorm, Transformer, VisionTransformer

from lightning_fid.extractors.inception import TorchFidelityInception


def calibration_images(n: int = 16, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Structured uint8 images (gradients, stripes, blobs, noise) for calibrating BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    images = []
    for i in range(n):
        phase = torch.rand(3, 1, 1, generator=g) * 6.28
        freq = 2 + 10 * torch.rand(3, 1, 1, generator=g)
        blob = torch.exp(-((xx - torch.rand(1, generator=g)) ** 2 + (yy - torch.rand(1, generator=g)) ** 2) * 20)
        x = 0.5 + 0.3 * torch.sin(freq * (xx if i % 2 else yy) + phase) + 0.3 * blob - 0.2 * xx * (i % 3)
        images.append((x + 0.05 * torch.randn(3, size, size, generator=g)).clamp(0, 1))
    return (torch.stack(images) * 255).round().to(torch.uint8)


def random_inception_state_dict(seed: int = 0, calibration: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """torch-fidelity's Inception-v3 keys and shapes: He-scaled random weights, and BatchNorm running
    statistics calibrated on images (``calibration``, uint8, default :func:`calibration_images`) in
    train mode with a cumulative average, so features are informative rather than near-constant.
    With the default calibration the result is made once per seed and test process (copies)."""
    if calibration is None:
        return {k: v.clone() for k, v in _default_inception(seed).items()}
    return _calibrated_inception(seed, calibration)


@functools.lru_cache(maxsize=4)
def _default_inception(seed: int) -> dict[str, torch.Tensor]:
    return _calibrated_inception(seed, calibration_images(seed=seed))


def _calibrated_inception(seed: int, calibration: torch.Tensor) -> dict[str, torch.Tensor]:
    template = TorchFidelityInception(None)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in template.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = value.clone()
        elif key.endswith("running_var"):
            state[key] = torch.ones(value.shape)
        elif key.endswith("running_mean"):
            state[key] = torch.zeros(value.shape)
        elif key.endswith("bn.weight"):
            state[key] = 0.8 + 0.4 * torch.rand(value.shape, generator=g)
        elif key.endswith("bias"):
            state[key] = 0.1 * torch.randn(value.shape, generator=g)
        else:  # conv / fc weights, He-scaled so activations stay O(1) through 94 layers
            state[key] = torch.randn(value.shape, generator=g) * (2.0 / value[0].numel()) ** 0.5
    net = TorchFidelityInception(state)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    net.train()
    with torch.no_grad():
        for batch in calibration.split(8):
            net(batch)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def write_random_inception(path: Path, seed: int = 0) -> Path:
    torch.save(random_inception_state_dict(seed), path)
    return path


class _TinyOpenAICLIP(nn.Module):
    """Same attribute names as OpenAI's CLIP (visual tower + text parts), at toy size."""

    def __init__(self, resolution=16, patch=8, width=64, layers=2, embed_dim=24, vocab=50, context=7):
        super().__init__()
        self.visual = VisionTransformer(resolution, patch, width, layers, width // 64, embed_dim)
        self.transformer = Transformer(width=32, layers=1, heads=1)
        self.token_embedding = nn.Embedding(vocab, 32)
        self.positional_embedding = nn.Parameter(torch.randn(context, 32))
        self.ln_final = LayerNorm(32)
        self.text_projection = nn.Parameter(torch.randn(32, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


def write_random_clip(path: Path, seed: int = 0, resolution: int = 16, full_size: bool = False) -> Path:
    """A traced TorchScript archive, the container OpenAI publishes CLIP in.

    ``full_size`` gives ViT-L/14@336px's shapes (24 layers, width 1024, 768-d output) for benchmarks."""
    torch.manual_seed(seed)
    if full_size:
        model = _TinyOpenAICLIP(resolution=336, patch=14, width=1024, layers=24, embed_dim=768).eval()
    else:
        model = _TinyOpenAICLIP(resolution=resolution).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    traced = torch.jit.trace(model, torch.randn(1, 3, resolution, resolution))
    torch.jit.save(traced, str(path))
    return path
