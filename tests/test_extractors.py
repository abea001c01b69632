"""Extractors with random weights in the published formats, against pytorch-fid, torch-fidelity
and the CMMD reference preprocessing (PIL bicubic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from helpers.weights import write_random_clip, write_random_inception
from PIL import Image
from torch import nn

from lightning_fid.extractors import CLIP, Frozen, InceptionV3, WeightsError, describe, run_extractor
from lightning_fid.extractors.clip import CLIP_MEAN, CLIP_STD, load_clip_state_dict


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    return write_random_inception(tmp_path_factory.mktemp("w") / "inception.pth")


@pytest.fixture(scope="module")
def inception(inception_file):
    with pytest.warns(UserWarning, match="not the published inception weights"):
        return InceptionV3(weights_path=inception_file)


def _images(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


@pytest.mark.slow
def test_inception_matches_pytorch_fid_at_299(inception, inception_file, monkeypatch):
    import pytorch_fid.inception as pf

    state = torch.load(inception_file, weights_only=True)
    monkeypatch.setattr(pf, "load_state_dict_from_url", lambda *a, **k: state)
    ref = pf.InceptionV3([3], resize_input=False, normalize_input=False).eval()
    images = _images(3, 299, 299)
    with torch.no_grad():
        expected = ref((images.float() - 128) / 128)[0].flatten(1)  # torch-fidelity's (x - 128) / 128
    ours = inception(images)
    assert ours.shape == (3, 2048)
    assert float(expected.abs().mean()) > 1e-3  # random weights still give non-trivial features
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("size", [(64, 64), (37, 53), (301, 299)])
def test_inception_matches_torch_fidelity_at_other_sizes(inception, inception_file, size):
    bare = tf_inception.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(inception_file)
    )
    images = _images(2, *size, seed=1)
    with torch.no_grad():
        expected = bare(images)[0]
    torch.testing.assert_close(inception(images), expected, rtol=1e-5, atol=1e-6)


def test_inception_stays_frozen(inception):
    images = _images(2, 40, 40, seed=2)
    before = inception(images)
    inception.train()
    assert not inception.training and not inception.net.training
    assert not any(p.requires_grad for p in inception.parameters())
    parent = nn.Sequential(inception).train()
    assert not parent[0].training
    assert torch.equal(inception(images), before)
    with pytest.raises(ValueError, match="expects uint8"):
        inception(images.float())


def test_inception_rejects_a_wrong_file(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="bad.pth is not an Inception-v3"), pytest.warns(UserWarning):
        InceptionV3(weights_path=bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError, match="cannot load weights from .*garbage.pth"), pytest.warns(UserWarning):
        InceptionV3(weights_path=garbage)
    with pytest.raises(WeightsError, match="missing.pth does not exist"):
        InceptionV3(weights_path=tmp_path / "missing.pth")


def _reference_clip_pixels(images: torch.Tensor, size: int) -> np.ndarray:
    """CMMD reference preprocessing: PIL bicubic resize of the 8-bit image, [0, 1], CLIP mean/std."""
    out = []
    for img in images.permute(0, 2, 3, 1).numpy():
        pil = Image.fromarray(img)
        if pil.size != (size, size):
            pil = pil.resize((size, size), resample=Image.BICUBIC)
        out.append(np.asarray(pil).astype(np.float64) / 255.0)
    arr = np.stack(out).transpose(0, 3, 1, 2)
    return (arr - np.array(CLIP_MEAN).reshape(1, 3, 1, 1)) / np.array(CLIP_STD).reshape(1, 3, 1, 1)


@pytest.fixture(scope="module")
def clip_336(tmp_path_factory):
    path = write_random_clip(tmp_path_factory.mktemp("c") / "clip336.pt", resolution=336)
    with pytest.warns(UserWarning, match="not the published clip weights"):
        return CLIP(weights_path=path)


@pytest.mark.parametrize("size", [(336, 336), (32, 32), (500, 417), (64, 100)])
def test_clip_preprocessing_matches_pil_bicubic(clip_336, size):
    images = _images(2, *size, seed=3)
    ours = clip_336.preprocess(images).double().numpy()
    ref = _reference_clip_pixels(images, 336)
    # The requirement is one 8-bit level; the PIL port is bit-exact, so only float32 rounding remains.
    assert np.abs(ours - ref).max() < 1e-5


def test_clip_torchscript_loads_and_matches_direct_build(tmp_path):
    from torch_fidelity.feature_extractor_clip import build_model

    path = write_random_clip(tmp_path / "tiny.pt", seed=4)
    with pytest.warns(UserWarning, match="not the published"):
        clip = CLIP(weights_path=path)
    assert clip.resolution == 16 and clip.feature_dim == 24
    direct = build_model(load_clip_state_dict(path), torch.float32)
    images = _images(4, 16, 16, seed=5)
    emb = clip(images)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4), rtol=0, atol=1e-6)
    with torch.no_grad():
        raw = direct.visual(clip.preprocess(images))
    torch.testing.assert_close(emb, raw / raw.norm(dim=1, keepdim=True), rtol=1e-6, atol=1e-6)
    clip.train()
    assert not clip.training and not clip.model.training


def test_clip_rejects_non_clip_checkpoint(tmp_path):
    path = tmp_path / "notclip.pt"
    torch.save({"a": torch.zeros(2)}, path)
    with pytest.raises(WeightsError, match="not an OpenAI CLIP checkpoint"), pytest.warns(UserWarning):
        CLIP(weights_path=path)


class DigitsEncoder(nn.Module):
    """A domain encoder that declares itself (name, feature_dim, input_range)."""

    name = "digits-encoder"
    feature_dim = 5
    input_range = (-1.0, 1.0)

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
        self.seen = None

    def forward(self, x):
        self.seen = (x.dtype, float(x.min()), float(x.max()))
        return self.net(x)


def test_any_module_is_accepted_and_can_declare_itself():
    enc = DigitsEncoder()
    images = _images(3, 8, 8)
    feats = run_extractor(Frozen(enc), images, enc.input_range)
    assert feats.shape == (3, 5) and enc.seen[0] == torch.float32 and enc.seen[1] >= -1 and enc.seen[2] <= 1
    info = describe(Frozen(enc))
    assert (info.name, info.feature_dim, info.input_range) == ("digits-encoder", 5, (-1.0, 1.0))
    plain = nn.Sequential(nn.AdaptiveAvgPool2d(1))  # undeclared: (0, 1) float input, dim inferred
    info = describe(plain)
    assert info.name == "Sequential" and info.feature_dim == 3 and info.input_range == (0.0, 1.0)
    assert len(info.fingerprint) == 64


def test_frozen_wrapper_ignores_train_and_runs_eval_whatever_the_modules_mode():
    bn = nn.BatchNorm1d(3)
    frozen = Frozen(nn.Sequential(nn.Flatten(), nn.Linear(12, 3), bn))
    frozen.train()
    assert not frozen.training and bn.training  # the wrapped module's own mode is left alone
    before = bn.running_mean.clone()
    frozen(torch.rand(4, 3, 2, 2))
    assert torch.equal(bn.running_mean, before) and bn.training  # eval for the pass, restored after
    with pytest.raises(ValueError, match="must return \\(N, D\\)"):
        run_extractor(nn.Identity(), _images(2, 4, 4), (0.0, 1.0))


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (200, 300), (299, 299)])
def test_pytorch_fid_preprocessing_reproduces_pytorch_fid(inception_file, size, tmp_path, monkeypatch):
    """InceptionV3(preprocess="pytorch-fid") equals pytorch-fid's own pipeline (resize_input and
    normalize_input on ToTensor images) with the same weights, found where pytorch-fid looks for them."""
    import shutil

    import pytorch_fid.inception as pf

    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copyfile(inception_file, hub / pf.FID_WEIGHTS_URL.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    theirs = pf.InceptionV3([3]).eval()
    with pytest.warns(UserWarning, match="not the published inception weights"):
        ours = InceptionV3(weights_path=inception_file, preprocess="pytorch-fid")
    images = _images(3, *size, seed=4)
    with torch.no_grad():
        expected = theirs(images.float() / 255)[0].flatten(1)
    torch.testing.assert_close(ours(images), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert ours.name == "inception-v3-tf-2015-12-05-pytorch-fid"
    with pytest.raises(ValueError, match="preprocess='clean'"):
        InceptionV3(weights_path=inception_file, preprocess="clean")
