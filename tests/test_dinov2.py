"""DINOv2 extractor: Meta's checkpoint format, Meta's forward, timm's forward, dgm-eval's and EDM2's
preprocessing (``resize="pil"`` and ``resize="torch"``).

Real weights cannot be downloaded here, so random He-scaled weights are written in exactly the format
of ``dinov2_vitl14_pretrain.pth`` (a torch.save'd state dict, Meta's keys, order and shapes) and
loaded through the extractor's own code path. Fast tests use a narrow, shallow model with the real
key format and the real 37 x 37 position grid; one slow test uses the full ViT-L/14 size.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as TF
from helpers.http import CLOSED_PORT_PROXY
from PIL import Image
from timm.models import create_model
from timm.models.vision_transformer import checkpoint_filter_fn

from lightning_fid.extractors import WeightsError, describe, run_extractor
from lightning_fid.extractors.dinov2 import DINOV2_WEIGHTS, DINOv2, build_vit

SMALL = dict(dim=128, depth=2, grid=37)  # 2 heads of 64, like every DINOv2 width
VITL14 = dict(dim=1024, depth=24, grid=37)  # dinov2_vitl14: 518 px / 14 = 37


def meta_format_shapes(dim: int, depth: int, grid: int, patch: int = 14) -> dict[str, tuple[int, ...]]:
    """Keys, order and shapes of Meta's DinoVisionTransformer state dict (block_chunks=0, layer scale)."""
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + grid * grid, dim), "mask_token": (1, dim)}
    shapes.update({"patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,)})
    for i in range(depth):
        for name, shape in [
            ("norm1.weight", (dim,)),
            ("norm1.bias", (dim,)),
            ("attn.qkv.weight", (3 * dim, dim)),
            ("attn.qkv.bias", (3 * dim,)),
            ("attn.proj.weight", (dim, dim)),
            ("attn.proj.bias", (dim,)),
            ("ls1.gamma", (dim,)),
            ("norm2.weight", (dim,)),
            ("norm2.bias", (dim,)),
            ("mlp.fc1.weight", (4 * dim, dim)),
            ("mlp.fc1.bias", (4 * dim,)),
            ("mlp.fc2.weight", (dim, 4 * dim)),
            ("mlp.fc2.bias", (dim,)),
            ("ls2.gamma", (dim,)),
        ]:
            shapes[f"blocks.{i}.{name}"] = shape
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    return shapes


def random_meta_state_dict(dim: int, depth: int, grid: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in meta_format_shapes(dim, depth, grid).items():
        r = torch.randn(shape, generator=g)
        if key.endswith("weight") and len(shape) >= 2:  # linear / conv: He-scaled
            state[key] = r * (2.0 / np.prod(shape[1:])) ** 0.5
        elif re.search(r"norm\d?\.weight$", key):
            state[key] = 1.0 + 0.1 * r
        elif key.endswith("gamma"):  # layer scale
            state[key] = 0.1 + 0.05 * r
        else:  # biases, tokens, position embedding
            state[key] = 0.05 * r
    return state


def write_meta_checkpoint(path, seed=0, **size):
    torch.save(random_meta_state_dict(**(size or SMALL), seed=seed), path)
    return path


def _meta_pos(pos_embed, w, h, patch):
    """Port of DinoVisionTransformer.interpolate_pos_encoding (interpolate_offset 0.1, no antialias)."""
    n, w0, h0 = pos_embed.shape[1] - 1, w // patch, h // patch
    if n == w0 * h0 and w == h:
        return pos_embed
    m, dim = int(n**0.5), pos_embed.shape[-1]
    pos = pos_embed.float()
    patch_pos = F.interpolate(
        pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2),
        scale_factor=(float(w0 + 0.1) / m, float(h0 + 0.1) / m),
        mode="bicubic",
        antialias=False,
    )
    patch_pos = patch_pos.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((pos[:, :1], patch_pos), dim=1).to(pos_embed.dtype)


def meta_forward(state, x):
    """Port of DinoVisionTransformer.forward in eval mode (what dgm-eval's torch.hub model runs)."""
    state = {k: v.to(x.dtype) for k, v in state.items()}
    weight = state["patch_embed.proj.weight"]
    dim, patch, (b, _, w, h) = weight.shape[0], weight.shape[-1], x.shape
    t = F.conv2d(x, weight, state["patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    t = torch.cat((state["cls_token"].expand(b, -1, -1), t), dim=1)
    t = t + _meta_pos(state["pos_embed"], w, h, patch)
    heads, depth = dim // 64, sum(k.endswith("norm1.weight") for k in state)
    for i in range(depth):
        p = lambda name: state[f"blocks.{i}.{name}"]  # noqa: B023, E731
        y = F.layer_norm(t, (dim,), p("norm1.weight"), p("norm1.bias"), 1e-6)
        qkv = F.linear(y, p("attn.qkv.weight"), p("attn.qkv.bias")).reshape(b, -1, 3, heads, dim // heads)
        q, k, v = (z.transpose(1, 2) for z in qkv.unbind(2))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, dim)
        t = t + p("ls1.gamma") * F.linear(y, p("attn.proj.weight"), p("attn.proj.bias"))
        y = F.layer_norm(t, (dim,), p("norm2.weight"), p("norm2.bias"), 1e-6)
        y = F.linear(
            F.gelu(F.linear(y, p("mlp.fc1.weight"), p("mlp.fc1.bias"))), p("mlp.fc2.weight"), p("mlp.fc2.bias")
        )
        t = t + p("ls2.gamma") * y
    return F.layer_norm(t, (dim,), state["norm.weight"], state["norm.bias"], 1e-6)[:, 0]


def dgm_eval_transform(image: Image.Image) -> torch.Tensor:
    """Port of dgm_eval/models/dinov2.py DINOv2Encoder.transform (clean_resize=False, the default)."""
    imagenet_mean, imagenet_std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    image = TF.Compose([TF.Resize((224, 224), TF.InterpolationMode.BICUBIC), TF.ToTensor()])(image)
    return TF.Normalize(imagenet_mean, imagenet_std)(image)


def edm2_transform(images: torch.Tensor, resize_mode: str) -> torch.Tensor:
    """Port of NVlabs/edm2 calculate_metrics.py DINOv2Detector.__call__ before the model: PIL bicubic
    per image (``'pil'``) or ``F.interpolate(..., 'bicubic', antialias=True)`` on the float batch
    (``'torch'``, EDM2's default), then / 255, - mean, / std as float32 constants."""
    if resize_mode == "pil":
        x = images.to(torch.uint8).permute(0, 2, 3, 1).numpy()
        x = np.stack([np.uint8(Image.fromarray(xx, "RGB").resize((224, 224), Image.Resampling.BICUBIC)) for xx in x])
        x = torch.from_numpy(x).permute(0, 3, 1, 2)
    else:
        x = F.interpolate(images.to(torch.float32), size=(224, 224), mode="bicubic", antialias=True)
    x = x.to(torch.float32) / 255
    x = x - torch.as_tensor([0.485, 0.456, 0.406], dtype=x.dtype).reshape(1, -1, 1, 1)
    return x / torch.as_tensor([0.229, 0.224, 0.225], dtype=x.dtype).reshape(1, -1, 1, 1)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    return write_meta_checkpoint(tmp_path_factory.mktemp("dinov2") / "dinov2_vitl14_pretrain.pth")


@pytest.fixture(scope="module")
def small(small_file):
    with pytest.warns(UserWarning, match="not the published dinov2 weights"):
        extractor = DINOv2(weights_path=small_file)
    return extractor, torch.load(small_file, weights_only=True)


@pytest.fixture(scope="module")
def small_torch(small_file):
    with pytest.warns(UserWarning, match="not the published dinov2 weights"):
        return DINOv2(weights_path=small_file, resize="torch")


def _images(seed, n, h, w):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, h, w), dtype=np.uint8))


def test_full_size_format_is_timms_vit_large_patch14_dinov2():
    shapes = meta_format_shapes(**VITL14)
    assert len(shapes) == 343 and sum(int(np.prod(s)) for s in shapes.values()) == 304_368_640
    with torch.device("meta"):
        timm_model = create_model("vit_large_patch14_dinov2", pretrained=False)  # 518 px, Meta's grid
    timm_shapes = {k: tuple(v.shape) for k, v in timm_model.state_dict().items()}
    assert timm_shapes == {k: s for k, s in shapes.items() if k != "mask_token"}


@pytest.mark.parametrize("size", [(224, 224), (64, 64), (300, 200)])
def test_features_match_metas_forward(small, size):
    extractor, state = small
    x = extractor.preprocess(_images(1, 2, *size))
    ours, ref = extractor.model(x), meta_forward(state, x)
    assert ours.shape == (2, SMALL["dim"])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    double = build_vit(state).double()  # the same graph in float64: only summation order can differ
    torch.testing.assert_close(double(x.double()), meta_forward(state, x.double()), rtol=1e-12, atol=1e-12)


def test_matches_timms_own_forward_on_the_same_weights(tmp_path):
    """On a checkpoint whose grid is already 16 x 16, no interpolation is involved: our model must be
    timm's own model loaded by timm's own checkpoint filter, bit for bit."""
    state = random_meta_state_dict(dim=128, depth=2, grid=16, seed=2)
    torch.save(state, tmp_path / "w.pth")
    with pytest.warns(UserWarning):
        extractor = DINOv2(weights_path=tmp_path / "w.pth")
    timm_model = create_model(
        "vit_large_patch14_dinov2", img_size=224, embed_dim=128, depth=2, num_heads=2, init_values=1.0, num_classes=0
    ).eval()
    timm_model.load_state_dict(checkpoint_filter_fn(dict(state), timm_model))
    x = extractor.preprocess(_images(3, 2, 96, 96))
    with torch.no_grad():
        assert torch.equal(extractor.model(x), timm_model(x))


def test_position_embedding_is_resized_as_dinov2_not_as_timm(small):
    extractor, state = small
    ours = extractor.model.pos_embed
    torch.testing.assert_close(ours, _meta_pos(state["pos_embed"], 224, 224, 14), rtol=0, atol=0)
    timm_way = create_model("vit_large_patch14_dinov2", img_size=224, embed_dim=128, depth=2, num_heads=2)
    resized = checkpoint_filter_fn(dict(state), timm_way)["pos_embed"]  # antialiased, by size
    assert resized.shape == ours.shape and (resized - ours).abs().max() > 1e-3


@pytest.mark.parametrize("size", [(224, 224), (32, 32), (64, 48), (300, 300), (17, 401)])
def test_preprocessing_is_dgm_evals(small, size):
    extractor, _ = small
    images = _images(4, 3, *size)
    ours = extractor.preprocess(images)
    for i in range(images.shape[0]):
        ref = dgm_eval_transform(Image.fromarray(images[i].permute(1, 2, 0).numpy()))
        assert ref.dtype == ours.dtype and torch.equal(ours[i], ref)  # bit-identical


@pytest.mark.parametrize("size", [(224, 224), (32, 32), (64, 48), (256, 256), (300, 300), (17, 401)])
def test_each_resize_mode_is_edm2s(small, small_torch, size):
    """``resize="pil"`` is EDM2's resize_mode='pil' (and dgm-eval's), ``"torch"`` its default resize_mode
    ='torch', bit for bit; both run one network on identical images."""
    images = _images(7, 3, *size)
    assert torch.equal(small[0].preprocess(images), edm2_transform(images, "pil"))
    assert torch.equal(small_torch.preprocess(images), edm2_transform(images, "torch"))
    torch.testing.assert_close(small_torch(images), small[0].model(edm2_transform(images, "torch")), rtol=0, atol=0)


def test_the_resize_modes_differ_and_are_part_of_the_identity(small, small_torch, small_file):
    from lightning_fid.engine._networks import standard_identity, standard_network
    from lightning_fid.engine._slots import build_slots
    from lightning_fid.metrics import FDDINOv2

    pil = small[0]
    images = _images(8, 2, 64, 64)  # upsampled noise: bicubic overshoots, which PIL clips and torch does not
    levels = (pil.preprocess(images) - small_torch.preprocess(images)).abs() * pil.std * 255
    assert 0.1 < float(levels.mean()) < 1.0 and float(levels.max()) > 5.0
    assert not torch.equal(pil(images), small_torch(images))
    assert torch.equal(pil.preprocess(_images(8, 2, 224, 224)), small_torch.preprocess(_images(8, 2, 224, 224)))
    one, other = describe(pil), describe(small_torch)
    assert (one.name, other.name) == ("dinov2-vit-l-14", "dinov2-vit-l-14-torch-resize")
    assert one.config != other.config and one.fingerprint == other.fingerprint  # same weights, other reading
    assert standard_identity("dinov2", resize="torch") == ("dinov2-vit-l-14-torch-resize", 1024)
    with pytest.warns(UserWarning, match="not the published dinov2 weights"):
        slots, names = build_slots(
            [FDDINOv2()], weights={"dinov2": small_file}, options={"dinov2": {"resize": "torch"}}
        )
        again = standard_network("dinov2", small_file)
    assert names == ["dinov2"] and slots[0].info.name == other.name and slots[0].info.config == other.config
    assert again.module.resize == "pil" and slots[0].module is standard_network("dinov2", small_file, resize="torch")
    with pytest.raises(ValueError, match=r"DINOv2\(resize='bilinear'\); choose from \('pil', 'torch'\)"):
        DINOv2(weights_path=small_file, resize="bilinear")


@pytest.mark.filterwarnings("ignore:FID from 6 generated samples")
def test_the_reference_cache_keeps_the_resize_modes_apart(small_file, tmp_path):
    from helpers.tiny import TinyGAN, real_images
    from torch.utils.data import TensorDataset

    from lightning_fid import GenerativeMetrics
    from lightning_fid.engine._reference import forget_resolved
    from lightning_fid.metrics import FDDINOv2

    def evaluate(resize):
        forget_resolved()
        with pytest.warns(UserWarning, match="not the published dinov2 weights"):
            extractor = DINOv2(weights_path=small_file, resize=resize)
        callback = GenerativeMetrics(
            real=TensorDataset(real_images(8)),
            sample_fn=lambda module, n, generator: module.sample_images(n, generator),
            metrics=[FDDINOv2(extractor=extractor)],
            num_samples=6,
            batch_size=3,
            cache_dir=tmp_path,
            progress=False,
            log_images=0,
        )
        return callback.evaluate(TinyGAN())[0]["fd_dinov2"], set(tmp_path.glob("*.npz"))

    pil, first = evaluate("pil")
    torch_resize, second = evaluate("torch")
    assert len(first) == 1 and len(second) == 2 and torch_resize != pil  # a miss: another entry
    assert evaluate("pil") == (pil, second)  # a hit on the first entry


def test_declared_attributes_and_extraction(small):
    extractor, _ = small
    assert (DINOv2.name, DINOv2.feature_dim, DINOv2.input_range) == ("dinov2-vit-l-14", 1024, "uint8")
    info = describe(extractor)
    assert (info.name, info.feature_dim, info.input_range) == ("dinov2-vit-l-14", SMALL["dim"], "uint8")
    from lightning_fid.extractors.base import weights_fingerprint

    assert info.fingerprint == weights_fingerprint(extractor) and DINOV2_WEIGHTS.sha256 is None
    images = _images(5, 2, 40, 40)
    feats = run_extractor(extractor, images, "uint8")
    torch.testing.assert_close(feats, meta_forward(extractor_state(extractor), extractor.preprocess(images)))
    assert not any(p.requires_grad for p in extractor.parameters())
    with pytest.raises(ValueError, match="uint8"):
        extractor(images.float())


def extractor_state(extractor):
    """Meta-format state of a loaded extractor (the 224-px position embedding is used unchanged)."""
    state = {k: v for k, v in extractor.model.state_dict().items()}
    state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    return state


def test_wrong_checkpoint_is_named(tmp_path):
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.warns(UserWarning), pytest.raises(WeightsError, match="not a DINOv2 backbone"):
        DINOv2(weights_path=tmp_path / "other.pth")


def test_offline_error_names_url_and_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_FID_HOME", str(tmp_path / "home"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, CLOSED_PORT_PROXY)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(WeightsError) as info:
        DINOv2()
    message = str(info.value)
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth" in message
    assert "lightning-fid download dinov2" in message
    assert str(tmp_path / "home" / "dinov2_vitl14_pretrain.pth") in message


@pytest.mark.slow
def test_full_size_vitl14_checkpoint_loads_and_runs(tmp_path):
    path = write_meta_checkpoint(tmp_path / "dinov2_vitl14_pretrain.pth", seed=1, **VITL14)
    with pytest.warns(UserWarning):
        extractor = DINOv2(weights_path=path)
    images = _images(6, 1, 64, 64)
    feats = extractor(images)
    assert feats.shape == (1, 1024) and feats.dtype == torch.float32
    state = torch.load(path, weights_only=True)
    torch.testing.assert_close(feats, meta_forward(state, extractor.preprocess(images)), rtol=1e-4, atol=1e-4)
