"""sFID: ADM's mixed_6/conv features (Mixed_6d's 1x1 branch after BN + ReLU, first 7 channels, NHWC
order) from the FID forward pass, checked against an independent path on the same random weights:
pytorch-fid's network with the TF graph's input normalisation and a hook on its Mixed_6d block, ADM's
own numpy slicing and flattening, and a float64 Fréchet distance computed through a nuclear norm
(not the eigendecomposition the package uses)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers.http import CLOSED_PORT_PROXY
from helpers.tiny import TinyFeatures, TinyGAN, real_images
from helpers.weights import write_random_inception
from PIL import Image
from torch.utils.data import TensorDataset
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from lightning_fid import GenerativeMetrics, InceptionV3, cli
from lightning_fid.engine._images import to_uint8
from lightning_fid.engine._networks import standard_identity
from lightning_fid.engine._pipeline import Accumulator
from lightning_fid.engine._sampling import noise_generator
from lightning_fid.engine._slots import build_slots, standard_slot_name
from lightning_fid.engine._stats import identity_metadata
from lightning_fid.metrics import SFID, InceptionScore, resolve_metrics

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*is not the published inception weights", "ignore:FID from .* the covariance is singular"
)
N, BATCH = 6, 3
# Features agree to the float32 rounding of two implementations of the same network; the Fréchet
# distances of a few samples in 2023 dimensions then agree to ~1e-7 relative: with fewer samples than
# dimensions, the package's eigvalsh path sums square roots of ~2000 rounding-level eigenvalues of the
# null space, which the nuclear norm does not see (also on identical float64 features).
FEATURE_RTOL, FD_RTOL = 1e-5, 1e-5
SPATIAL = "inception-v3-tf-2015-12-05-spatial"  # the slot and statistics name of a non-standard InceptionV3


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    return write_random_inception(tmp_path_factory.mktemp("w") / "inception.pth")


@pytest.fixture(scope="module")
def pytorch_fid_net(inception_file):
    """pytorch-fid's InceptionV3 (its FIDInception blocks, torchvision's layers) with the same weights."""
    import pytorch_fid.inception as pf

    state = torch.load(inception_file, weights_only=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pf, "load_state_dict_from_url", lambda *a, **k: state)
        net = pf.InceptionV3([3], resize_input=False, normalize_input=False).eval()
    block2 = net.blocks[2]  # Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e: the TF graph's mixed .. mixed_7
    assert [type(m).__name__ for m in block2] == ["FIDInceptionA"] * 3 + ["InceptionB"] + ["FIDInceptionC"] * 4
    return net


def adm_spatial(net, images: torch.Tensor, **others: torch.nn.Module) -> np.ndarray | dict[str, np.ndarray]:
    """ADM's sFID features through pytorch-fid's network: the TF graph's input (its bilinear resize to
    299, as torch-fidelity ports it, and (x - 128) / 128), the output of ``blocks[2][6]`` (the third
    block after the 35 -> 17 reduction mixed_3 = blocks[2][3], i.e. mixed_6), then ADM's
    ``spatial[..., :7]`` on the NHWC array and ``reshape(N, -1)``. With ``others`` (name: module), the same of each of those
    modules' outputs too, from the same forward pass, as a dict with ``"mixed_6"``."""
    x = images.float()
    if x.shape[-2:] != (299, 299):
        x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    targets = {"mixed_6": net.blocks[2][6], **others}
    captured: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda m, args, out, name=name: captured.setdefault(name, out.detach().clone()))
        for name, module in targets.items()
    ]
    try:
        with torch.no_grad():
            net((x - 128) / 128)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for name, value in captured.items():
        spatial = value.permute(0, 2, 3, 1).double().numpy()[..., :7]  # TF's NHWC layout, then ADM's slice
        out[name] = spatial.reshape(spatial.shape[0], -1)
    return out if others else out["mixed_6"]


def frechet_nuclear(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of the Gaussians fitted to the rows of ``a`` and ``b`` (unbiased covariances),
    float64 numpy. tr sqrt(Sa Sb) is the nuclear norm of Ca Cb^T / sqrt((na - 1)(nb - 1)) for the
    centred rows Ca, Cb (the non-zero eigenvalues of Sa Sb are its squared singular values): exact for
    the singular covariances of fewer samples than dimensions, and independent of eigh / sqrtm."""
    ca, cb = a - a.mean(0), b - b.mean(0)
    na, nb = a.shape[0] - 1, b.shape[0] - 1
    cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / math.sqrt(na * nb)
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + (ca * ca).sum() / na + (cb * cb).sum() / nb - 2 * cross)


def _close(ours: np.ndarray, ref: np.ndarray) -> None:
    np.testing.assert_allclose(ours, ref, rtol=FEATURE_RTOL, atol=FEATURE_RTOL * np.abs(ref).max())


def _far(ours: np.ndarray, other: np.ndarray) -> bool:
    return float(np.abs(ours - other).max()) > 1e-2 * float(np.abs(other).max())


def test_the_block_the_op_and_the_order_are_adms(inception_file, pytorch_fid_net):
    """Mixed_6d (mixed_6), after BN + ReLU (the op with the scope's bare name), NHWC order; the
    neighbouring blocks, the raw convolution and NCHW flattening all give other vectors."""
    images = torch.randint(0, 256, (2, 3, 299, 299), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    pool, logits, spatial = InceptionV3(inception_file, logits=True, spatial=True)(images)
    plain = InceptionV3(inception_file, logits=True)(images)  # the spatial output changes nothing else
    assert torch.equal(pool, plain[0]) and torch.equal(logits, plain[1])
    ours = spatial.double().numpy()
    assert ours.shape == (2, 2023) and ours.min() >= 0  # a ReLU output
    block2 = pytorch_fid_net.blocks[2]
    found = adm_spatial(
        pytorch_fid_net,
        images,
        mixed_7=block2[7],  # Mixed_6e, which some ports read
        mixed_5=block2[5],  # Mixed_6c
        conv2d=block2[6].branch1x1.conv,  # mixed_6/conv/Conv2D: before BatchNorm and ReLU
    )
    expected = found.pop("mixed_6")
    assert float(np.abs(expected).mean()) > 1e-2  # random weights still give non-trivial features
    _close(ours, expected)
    assert all(_far(ours, other) for other in found.values()), list(found)
    nchw = ours.reshape(2, 17, 17, 7).transpose(0, 3, 1, 2).reshape(2, -1)  # PyTorch's order
    assert _far(nchw, expected)


@pytest.fixture(scope="module")
def image_sets():
    """Real images (8, 8 x 8, as the tiny tests' data) and the tiny GAN's first evaluation samples."""
    real = to_uint8(real_images(8), (-1, 1))
    model = TinyGAN().eval()
    with torch.no_grad():
        fake = torch.cat([model.sample_images(BATCH, noise_generator(0, b)) for b in range(N // BATCH)])
    return real, to_uint8(fake, (-1, 1))


@pytest.fixture(scope="module")
def independent(image_sets, pytorch_fid_net):
    real, fake = image_sets
    a, b = adm_spatial(pytorch_fid_net, real), adm_spatial(pytorch_fid_net, fake)
    return a, b, frechet_nuclear(a, b)


def test_fid_is_and_sfid_share_one_forward_pass_of_the_standard_network(inception_file, image_sets, independent):
    slots, slot_of = build_slots(resolve_metrics(("fid", "is", "sfid")), weights={"inception": inception_file})
    assert slot_of == ["inception", "inception-logits", "inception-spatial"] == [s.name for s in slots]
    assert [s.info.feature_dim for s in slots] == [2048, 1008, 2023] and [s.output for s in slots] == [0, 1, 2]
    assert slots[2].info.name == standard_identity("inception", "spatial")[0] == "inception-v3-tf-2015-12-05-spatial"
    assert len({id(s.module) for s in slots}) == 1
    calls = []
    slots[0].module.module.register_forward_hook(lambda *a: calls.append(1))
    real, _ = image_sets
    acc = Accumulator(slots, torch.device("cpu"))
    for start in range(0, real.shape[0], 4):
        acc.add(real[start : start + 4], torch.arange(start, start + 4))
    stats = acc.finish()
    assert len(calls) == 2  # two batches: one forward pass each feeds FID, IS and sFID
    a = independent[0]
    mean_tol = FEATURE_RTOL * np.abs(a).max()
    np.testing.assert_allclose(stats["inception-spatial"].mu.numpy(), a.mean(0), rtol=FEATURE_RTOL, atol=mean_tol)
    cov = np.cov(a, rowvar=False)
    np.testing.assert_allclose(stats["inception-spatial"].sigma.numpy(), cov, rtol=1e-4, atol=1e-4 * np.abs(cov).max())


def _callback(real, feature_extractor, metrics):
    return GenerativeMetrics(
        real=real,
        sample_fn=lambda module, n, generator: module.sample_images(n, generator),
        metrics=metrics,
        feature_extractor=feature_extractor,
        num_samples=N,
        batch_size=BATCH,
        use_cache=False,
        progress=False,
        log_images=0,
        error_bars=False,  # not the subject here: 2048-d eigendecompositions with vectors cost seconds
    )


@pytest.mark.slow
def test_generative_metrics_scores_sfid_and_reads_a_statistics_file_for_its_slot(inception_file, independent, tmp_path):
    inception = InceptionV3(inception_file, logits=True, spatial=True)
    calls = []  # a global hook: a hook on the network would be part of its configuration, hence of the file's
    count = lambda module, args, out: calls.append(1) if module is inception.net else None  # noqa: E731
    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        cb = _callback(TensorDataset(real_images(8)), inception, ["fid", "sfid", InceptionScore(splits=2)])
        values, _ = cb.evaluate(TinyGAN())
    finally:
        handle.remove()
    slots = {s.name: s for s in cb.evaluator.slots}
    assert sorted(slots) == ["inception-v3-tf-2015-12-05", "inception-v3-tf-2015-12-05-logits", SPATIAL]
    assert len(calls) == 1 + 3 + 2  # the dry run, 8 real images in 3 batches, 6 samples in 2: none twice
    assert values["sfid"] == pytest.approx(independent[2], rel=FD_RTOL) and values["sfid"] > 0
    assert values["sfid"] != pytest.approx(values["fid"], rel=1e-3) and math.isfinite(values["is"])

    slot = slots[SPATIAL]  # the reference's sFID statistics, as a statistics file for real=
    stats = cb.evaluator.reference.stats[slot.name]
    stats.metadata = identity_metadata(slot.info)
    stats.save(tmp_path / "sfid_ref.npz")
    same = InceptionV3(inception_file, logits=True, spatial=True)  # its configuration is part of the identity
    again, _ = _callback(str(tmp_path / "sfid_ref.npz"), same, ["sfid"]).evaluate(TinyGAN())
    assert again["sfid"] == pytest.approx(values["sfid"], rel=1e-9)
    pool = cb.evaluator.reference.stats["inception-v3-tf-2015-12-05"]  # 2048-d pool statistics: refused
    pool.metadata = identity_metadata(slots["inception-v3-tf-2015-12-05"].info)
    pool.save(tmp_path / "pool.npz")
    with pytest.raises(ValueError, match=f"2048-d statistics but {SPATIAL} gives 2023-d"):
        _callback(str(tmp_path / "pool.npz"), same, ["sfid"]).evaluate(TinyGAN())


def test_standalone_sfid_reads_the_spatial_output(inception_file, image_sets, independent):
    from lightning_fid.standalone import SFID as StandaloneSFID

    metric = StandaloneSFID(feature_extractor=InceptionV3(inception_file, logits=True, spatial=True))
    real, fake = image_sets
    metric.update(real[:4], real=True)
    metric.update(fake[:3], real=False)
    a, b, _ = independent
    assert float(metric.compute()) == pytest.approx(frechet_nuclear(a[:4], b[:3]), rel=FD_RTOL)
    features = StandaloneSFID()  # without an extractor: (N, 2023) features
    features.update(torch.from_numpy(independent[0]), real=True)
    features.update(torch.from_numpy(independent[1]), real=False)
    assert float(features.compute()) == pytest.approx(independent[2], rel=FD_RTOL)


def test_cli_scores_sfid_between_folders(inception_file, pytorch_fid_net, tmp_path, capsys):
    g = torch.Generator().manual_seed(3)
    sides = []
    for name, count, shift in (("a", 4, 60), ("b", 3, 100)):
        images = (torch.rand(count, 3, 16, 16, generator=g) * 120 + shift).to(torch.uint8)
        (tmp_path / name).mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / name / f"{i}.png")
        sides.append(adm_spatial(pytorch_fid_net, images))
    args = ["score", str(tmp_path / "a"), str(tmp_path / "b"), "--metrics", "fid,sfid", "--json"]
    assert cli.main([*args, "--inception-weights", str(inception_file)]) == 0
    values = json.loads(capsys.readouterr().out)
    assert values["sfid"] == pytest.approx(frechet_nuclear(*sides), rel=FD_RTOL) and values["n_b"] == 3


def test_sfid_needs_a_spatial_output_and_the_tf_preprocessing(inception_file, tmp_path, monkeypatch):
    assert standard_slot_name(SFID()) == "inception-spatial" and SFID().needs.output == "spatial"
    assert repr(resolve_metrics("sfid")[0]) == "SFID()"
    monkeypatch.setenv("LIGHTNING_FID_HOME", str(tmp_path / "empty"))  # no standard weights, no download
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, CLOSED_PORT_PROXY)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(Exception, match=r"reads Inception-v3's spatial, which feature_extractor= does not provide"):
        build_slots(resolve_metrics(("fid", "sfid")), TinyFeatures())
    with pytest.raises(ValueError, match="sFID's spatial features are defined on the TF preprocessing"):
        InceptionV3(inception_file, spatial=True, preprocess="pytorch-fid")
    with pytest.raises(ValueError, match="has no output 'spatial'"):
        standard_identity("dinov2", "spatial")
