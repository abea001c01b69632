"""Random weights in exactly the published formats (same keys, shapes and container).

Real weights cannot be downloaded here, so tests write random ones and load them through the same
code path as the published files: a torch.save'd state dict for torch-fidelity's Inception, and an
OpenAI-style TorchScript archive for CLIP.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch_fidelity.feature_extractor_clip import LayerNorm, Transformer, VisionTransformer

from lightning_fid.extractors.inception import TorchFidelityInception


def random_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """torch-fidelity's Inception-v3 keys and shapes, with seeded random values."""
    template = TorchFidelityInception(None)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in template.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = value.clone()
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=g)
        elif key.endswith("running_mean") or key.endswith("bias"):
            state[key] = 0.1 * torch.randn(value.shape, generator=g)
        elif key.endswith("bn.weight"):
            state[key] = 0.8 + 0.4 * torch.rand(value.shape, generator=g)
        else:  # conv / fc weights, He-scaled so activations stay O(1) through 94 layers
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=g) * (2.0 / fan_in) ** 0.5
    return state


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
