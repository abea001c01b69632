"""TF-exact Inception-v3 pool3 features (FID / KID), via torch-fidelity's extractor."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import (
    BasicConv2d,
    FeatureExtractorInceptionV3,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE_1,
    InceptionE_2,
)

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


class TorchFidelityInception(FeatureExtractorInceptionV3):
    """torch-fidelity's TF-ported Inception-v3 (its layers and its ``forward``), built from a state dict.

    torch-fidelity's constructor loads the weights itself: from the network, or from an explicit path
    with ``torch.load(weights_only=False)``, which would run a pickle payload hidden in the file. We
    extend the class rather than patch its loader: this constructor builds the same layers as
    torch-fidelity's (0.3 / 0.4) and loads a state dict the caller read safely. ``state_dict=None``
    leaves the layers at their initial values (for writing weights in the published format).
    """

    def __init__(self, state_dict: dict[str, torch.Tensor] | None, features: Sequence[str] = ("2048",)) -> None:
        FeatureExtractorBase.__init__(self, "inception-v3-compat", list(features))
        self.feature_extractor_internal_dtype = torch.float32
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE_1(1280)
        self.Mixed_7c = InceptionE_2(2048)
        self.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
        self.fc = nn.Linear(2048, 1008)
        if state_dict is not None:
            self.load_state_dict(state_dict)
        self.requires_grad_(False)
        self.eval()

    def pool_features(self, x: torch.Tensor) -> torch.Tensor:
        """2048-d pool3 features of an already resized and normalised (N, 3, 299, 299) float tensor:
        torch-fidelity's layers without its TF1 resize and (x - 128) / 128, for other preprocessings."""
        for name in (
            "Conv2d_1a_3x3",
            "Conv2d_2a_3x3",
            "Conv2d_2b_3x3",
            "MaxPool_1",
            "Conv2d_3b_1x1",
            "Conv2d_4a_3x3",
            "MaxPool_2",
            "Mixed_5b",
            "Mixed_5c",
            "Mixed_5d",
            "Mixed_6a",
            "Mixed_6b",
            "Mixed_6c",
            "Mixed_6d",
            "Mixed_6e",
            "Mixed_7a",
            "Mixed_7b",
            "Mixed_7c",
            "AvgPool",
        ):
            x = getattr(self, name)(x)
        return torch.flatten(x, 1)


PREPROCESSINGS = ("tf", "pytorch-fid")

#: sFID's block and width. ADM's evaluator (openai/guided-diffusion evaluations/evaluator.py) reads the
#: TF graph's tensor ``mixed_6/conv:0`` and keeps ``spatial[..., :7]``. Which torch module that is:
#: the 2015 graph names its Inception blocks mixed, mixed_1, ..., mixed_10 in node order; mixed_3 is
#: the 35 -> 17 reduction (torchvision's Mixed_6a), so mixed_4..mixed_7 are the four 17 x 17 blocks
#: Mixed_6b..Mixed_6e and mixed_6 is Mixed_6d. The weights file agrees independently of the order:
#: torch-fidelity's converter (toshas/torch-fidelity inception_features.py, map_tf_to_pt) stores
#: 'mixed_6/conv/conv2d_params' and 'mixed_6/conv/batchnorm' as Mixed_6d.branch1x1.conv / .bn, and
#: mixed_7's 7x7 tower has 192 channels (Mixed_6e, channels_7x7=192) where mixed_6's has 160. Within
#: the scope the graph's ops are conv/conv2d_params, conv/Conv2D (the raw convolution), the
#: conv/batchnorm constants, conv/batchnorm (BatchNormWithGlobalNormalization), conv/CheckNumerics,
#: conv/control_dependency and last ``conv`` itself (anshuman23/tensorflex lists the graph's ops in
#: this order): the bare name is the ReLU after BatchNorm, i.e. BasicConv2d's output. Ports that read
#: Mixed_6e (or the raw convolution) compute another feature.
SPATIAL_BLOCK = "Mixed_6d"
SPATIAL_CHANNELS = 7
#: 7 channels on the 17 x 17 grid of a 299 x 299 input
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17


def spatial_features(branch1x1: torch.Tensor) -> torch.Tensor:
    """ADM's sFID vector from Mixed_6d.branch1x1's (N, 192, 17, 17) output: the first 7 channels,
    flattened in TF's NHWC order (ADM's ``spatial[..., :7].reshape(N, -1)``), so that index
    ``(h * 17 + w) * 7 + c`` holds channel c at (h, w), as in ADM's ``mu_s`` / ``sigma_s``."""
    return branch1x1[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(branch1x1.shape[0], -1).to(torch.float32)


class InceptionV3(AlwaysEval):
    """2048-d pool3 features of the TF-ported Inception-v3 (``inception-2015-12-05``).

    This is torch-fidelity's ``FeatureExtractorInceptionV3`` (the network torchmetrics also uses):
    uint8 NCHW RGB input of any size, TF1-compatible bilinear resize to 299, (x - 128) / 128.
    ``preprocess="pytorch-fid"`` reproduces pytorch-fid's own folder pipeline instead (PyTorch's
    bilinear resize of x / 255, then 2x - 1), for comparing with numbers published with pytorch-fid.
    Weights are resolved by :func:`resolve_weights` and loaded with ``weights_only=True``.

    Args:
        weights_path: the weights file (default: the verified cache, or a download).
        logits: also return the 1008 unbiased logits (Inception Score's input).
        preprocess: ``"tf"`` (the TF graph's, default) or ``"pytorch-fid"``.
        spatial: also return sFID's 2023-d spatial features (ADM's ``mixed_6/conv:0``, first 7
            channels, NHWC order; see :data:`SPATIAL_BLOCK`), from the same forward pass.

    Raises:
        ValueError: an unknown ``preprocess``, or logits / spatial features with a preprocessing
            other than ``"tf"`` (both are defined on the TF graph's).
    """

    name = "inception-v3-tf-2015-12-05"
    feature_dim = 2048
    input_range = "uint8"

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        logits: bool = False,
        preprocess: str = "tf",
        spatial: bool = False,
    ) -> None:
        super().__init__()
        if preprocess not in PREPROCESSINGS:
            raise ValueError(f"preprocess={preprocess!r}; choose from {PREPROCESSINGS}")
        if preprocess != "tf" and (logits or spatial):
            what = "Inception Score logits" if logits else "sFID's spatial features"
            raise ValueError(f"{what} are defined on the TF preprocessing: use preprocess='tf'")
        self.logits = logits
        self.spatial = spatial
        # what forward returns, in order
        self.outputs = ("features",) + (("logits",) if logits else ()) + (("spatial",) if spatial else ())
        self.preprocess = preprocess
        if preprocess != "tf":
            self.name = f"{type(self).name}-{preprocess}"
        path, self.weights_sha256 = resolve_verified(INCEPTION_WEIGHTS, weights_path)
        state = load_state_dict_file(path)
        try:
            self.net = TorchFidelityInception(state, ("2048", "logits_unbiased") if logits else ("2048",))
        except RuntimeError as exc:  # wrong keys or shapes
            raise WeightsError(f"{path} is not an Inception-v3 FID state dict: {exc}") from exc

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """uint8 (N, 3, H, W) -> float32 (N, 2048) pool features; with ``logits=True`` also the (N, 1008)
        unbiased logits and with ``spatial=True`` the (N, 2023) sFID features, all from one forward
        pass, in the order of ``outputs``."""
        if images.dtype != torch.uint8:
            raise ValueError(f"InceptionV3 expects uint8 images (use lightning_fid.to_uint8), got {images.dtype}")
        with torch.no_grad():
            if self.preprocess == "pytorch-fid":  # its folder pipeline: ToTensor, bilinear resize, 2x - 1
                x = F.interpolate(images.float() / 255.0, size=(299, 299), mode="bilinear", align_corners=False)
                return self.net.pool_features(2 * x - 1)
            if not self.spatial:
                outputs = self.net(images)
                return (outputs[0], outputs[1]) if self.logits else outputs[0]
            # a hook held only for this pass: the module's configuration (its identity) carries no hook
            captured: list[torch.Tensor] = []
            branch = getattr(self.net, SPATIAL_BLOCK).branch1x1
            handle = branch.register_forward_hook(lambda module, args, out: captured.append(spatial_features(out)))
            try:
                outputs = self.net(images)
            finally:
                handle.remove()
        return (*outputs, captured[0])
