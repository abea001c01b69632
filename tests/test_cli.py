"""lightning-fid stats / score: round trips with pytorch-fid's loader, and clear errors."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from helpers.weights import calibration_images, random_inception_state_dict
from PIL import Image
from pytorch_fid.fid_score import compute_statistics_of_path

from lightning_fid import cli
from lightning_fid.engine._stats import Statistics

pytestmark = pytest.mark.filterwarnings("ignore:.*is not the published inception weights")


def _folder(path, n, shift, size=24, seed=0):
    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        img = (torch.rand(size, size, 3, generator=g) * 0.6 + shift).clamp(0, 1).mul(255).byte().numpy()
        Image.fromarray(img).save(path / f"{i:03d}.png")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    weights = root / "inception.pth"  # the published format; BatchNorm calibrated on a few small images (fast)
    torch.save(random_inception_state_dict(calibration=calibration_images(n=4, size=32)), weights)
    return root, str(weights), _folder(root / "a", 12, 0.1), _folder(root / "b", 10, 0.3, seed=1)


def _run(args, capsys):
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_stats_is_read_by_pytorch_fid_and_score_round_trips(setup, capsys):
    root, weights, a, b = setup
    out = root / "a.npz"
    code, stdout, _ = _run(["stats", str(a), "-o", str(out), "--inception-weights", weights], capsys)
    assert code == 0 and "12 images" in stdout
    mu, sigma = compute_statistics_of_path(str(out), None, 50, 2048, "cpu")
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
    code, folders, _ = _run(["score", str(a), str(b), "--json", "--inception-weights", weights], capsys)
    code2, with_npz, _ = _run(["score", str(out), str(b), "--json", "--inception-weights", weights], capsys)
    assert code == code2 == 0
    fid_folders, fid_npz = json.loads(folders)["fid"], json.loads(with_npz)["fid"]
    assert fid_npz == pytest.approx(fid_folders, rel=1e-9) and fid_folders > 0


def test_score_kid_and_text_output(setup, capsys):
    root, weights, a, b = setup
    code, stdout, _ = _run(
        [
            "score",
            str(a),
            str(b),
            "--metrics",
            "fid,kid",
            "--kid-subset-size",
            "8",
            "--kid-subsets",
            "5",
            "--inception-weights",
            weights,
        ],
        capsys,
    )
    assert code == 0
    assert "fid:" in stdout and "kid:" in stdout and "kid_std:" in stdout


def test_errors_are_clear(setup, capsys, tmp_path):
    root, weights, a, b = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(["stats", str(empty), "-o", str(tmp_path / "x.npz"), "--inception-weights", weights], capsys)
    assert code == 2 and "no images" in err
    broken = _folder(tmp_path / "broken", 3, 0.2)
    (broken / "001.png").write_bytes(b"not a png")
    code, _, err = _run(["stats", str(broken), "-o", str(tmp_path / "x.npz"), "--inception-weights", weights], capsys)
    assert code == 2 and "cannot read image" in err and "001.png" in err
    small = tmp_path / "small.npz"
    np.savez(small, mu=np.zeros(8), sigma=np.eye(8))
    code, _, err = _run(["score", str(small), str(b), "--inception-weights", weights], capsys)
    assert (
        code == 2
        and "small.npz (edm: mu/sigma) holds 8-d statistics but inception-v3-tf-2015-12-05 gives 2048-d" in err
    )
    code, _, err = _run(["score", str(small), str(b), "--metrics", "kid", "--inception-weights", weights], capsys)
    assert code == 2 and "holds statistics only" in err and "['kid'] need the real images" in err
    code, _, err = _run(["score", str(a), str(tmp_path / "nope"), "--inception-weights", weights], capsys)
    assert code == 2 and "neither an image folder" in err


# ---------------------------------------------------------------- stats --format: files other tools read
@pytest.fixture(scope="module")
def four(setup):
    """Four reference images (one size), three generated ones, and the reference's features computed
    directly: TF pool and spatial features, and pytorch-fid's preprocessing. The standard Inception stays
    loaded for the module (the CLI's commands share it, as any two uses in one process do)."""
    from lightning_fid.engine._networks import standard_network
    from lightning_fid.extractors import InceptionV3

    root, weights, _, _ = setup
    ref, gen = _folder(root / "four", 4, 0.2, size=20, seed=4), _folder(root / "three", 3, 0.25, size=20, seed=5)
    images = _images(ref)
    with pytest.warns(UserWarning, match="not the published"):
        network = standard_network("inception", weights)
        pytorch_fid = InceptionV3(weights, preprocess="pytorch-fid")(images)
    pool, _, spatial = network.module(images)  # InceptionV3(logits=True, spatial=True): one pass
    generated = network.module(_images(gen))[0]
    direct = {"pool": pool, "spatial": spatial, "pytorch-fid": pytorch_fid, "generated": generated}
    return ref, gen, images, {**direct, "network": network}


def _images(folder):
    """uint8 NCHW, read with PIL as pytorch-fid and guided-diffusion's users read them."""
    files = sorted(folder.glob("*.png"))
    return torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])


def _assert_moments(mu, sigma, features):
    x = features.double().numpy()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-7, atol=1e-9)


# guided-diffusion evaluations/evaluator.py, ported without TensorFlow: how it opens a batch's arr_0
# (open_npz_array -> _open_npy_file -> StreamingNpzArrayReader.read_batch) and reads its statistics.
def _adm_read_batches(path, arr_name, batch_size):
    with open(path, "rb") as f, zipfile.ZipFile(f, "r") as zip_f:
        assert f"{arr_name}.npy" in zip_f.namelist(), f"missing {arr_name} in npz file"
        with zip_f.open(f"{arr_name}.npy", "r") as arr_f:
            version = np.lib.format.read_magic(arr_f)
            assert version in ((1, 0), (2, 0))  # else it falls back to np.load(f)[arr_name] in memory
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(arr_f)
            assert not fortran and not dtype.hasobject
            batches, idx = [], 0
            while idx < shape[0]:
                bs = min(batch_size, shape[0] - idx)
                idx += bs
                data = arr_f.read(int(bs * np.prod(shape[1:]) * dtype.itemsize))
                batches.append(np.frombuffer(data, dtype=dtype).reshape([bs, *shape[1:]]))
    return batches


def _adm_read_statistics(path):
    obj = np.load(path)  # evaluator.read_statistics: mu/sigma and mu_s/sigma_s when "mu" is in the file
    assert "mu" in list(obj.keys())
    return (obj["mu"], obj["sigma"]), (obj["mu_s"], obj["sigma_s"])


@pytest.fixture(scope="module")
def adm_file(setup, four):
    """``lightning-fid stats --format adm`` of the four reference images, and what it printed."""
    root, weights, _, _ = setup
    out, printed = root / "ref_adm.npz", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["stats", str(four[0]), "-o", str(out), "--format", "adm", "--inception-weights", weights]) == 0
    return out, printed.getvalue()


def test_stats_format_adm_is_read_by_guided_diffusions_evaluator(setup, four, adm_file, capsys):
    from lightning_fid.engine._formats import read_reference_file

    root = setup[0]
    _, _, images, direct = four
    out, printed = adm_file
    assert "arr_0 (4 x 20 x 20 x 3 uint8)" in printed
    arr_0 = np.concatenate(_adm_read_batches(out, "arr_0", batch_size=3))  # its default batch is 64
    assert arr_0.dtype == np.uint8 and np.array_equal(arr_0, images.permute(0, 2, 3, 1).numpy())
    (mu, sigma), (mu_s, sigma_s) = _adm_read_statistics(out)
    assert mu.shape == (2048,) and mu_s.shape == (2023,)
    _assert_moments(mu, sigma, direct["pool"])
    _assert_moments(mu_s, sigma_s, direct["spatial"])
    back = read_reference_file(out)
    assert back.format == "adm" and len(back.images) == 4 and back.images.stored
    mixed = _folder(root / "mixed", 2, 0.2, size=20)
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(mixed / "2.png")
    code, _, err = _run(["stats", str(mixed), "-o", str(root / "m.npz"), "--format", "adm"], capsys)
    assert code == 2 and "mixes sizes: 20x20 (000.png), 24x24 (2.png)" in err  # before any network runs


def test_score_takes_an_adm_batch_as_reference_and_its_images_for_kid(setup, four, adm_file, capsys):
    from lightning_fid.metrics import kid

    weights = setup[1]
    _, gen, _, direct = four
    options = ["--metrics", "kid", "--kid-subsets", "5", "--kid-subset-size", "3", "--json"]
    code, stdout, _ = _run(["score", str(adm_file[0]), str(gen), *options, "--inception-weights", weights], capsys)
    assert code == 0
    values = json.loads(stdout)
    expected = kid(direct["pool"], direct["generated"], num_subsets=5, subset_size=3, seed=0)  # arr_0's own features
    assert (values["n_a"], values["n_b"]) == (4, 3)
    assert (values["kid"], values["kid_std"]) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_score_under_the_adm_protocol_prints_its_metrics_and_card(setup, four, adm_file, capsys):
    weights, gen = setup[1], setup[3]  # 10 generated images: precision / recall (k = 3) need more than k
    args = ["score", str(adm_file[0]), str(gen), "--protocol", "adm", "--json", "--inception-weights", weights]
    code, stdout, stderr = _run(args, capsys)
    assert code == 0, stderr
    values = json.loads(stdout)
    assert {"fid", "sfid", "is", "precision", "recall"} <= set(values)
    card = values["card"]
    assert card["protocol"] == "adm" and card["deviations"] == []
    assert card["reference"]["identity"].startswith("adm:sha256:")
    spatial = card["reference"]["slots"]["inception-spatial"]  # ADM's mu_s / sigma_s: the file records no count
    assert spatial["format"] == "adm" and card["reference"]["identity"].endswith(spatial["sha256"])
    assert [m["metric"] for m in card["metrics"]] == ["FID", "SFID", "InceptionScore", "PrecisionRecall"]
    assert card["metrics"][2]["options"]["split_size"] == 5000 and card["metrics"][3]["options"]["k"] == 3


def test_stats_format_pytorch_fid_uses_its_preprocessing_and_is_read_by_it(setup, four, capsys):
    root, weights, _, _ = setup
    ref, _, _, direct = four
    out = root / "ref_pytorch_fid.npz"
    code, stdout, _ = _run(
        ["stats", str(ref), "-o", str(out), "--format", "pytorch-fid", "--inception-weights", weights], capsys
    )
    assert code == 0 and "inception-v3-tf-2015-12-05-pytorch-fid features" in stdout
    with np.load(out) as f:
        assert sorted(f.files) == ["mu", "sigma"]  # nothing pytorch-fid does not write
    mu, sigma = compute_statistics_of_path(str(out), None, 50, 2048, "cpu")  # pytorch-fid's own loading
    _assert_moments(mu, sigma, direct["pytorch-fid"])
    assert not np.allclose(mu, direct["pool"].double().numpy().mean(0), rtol=1e-3)  # not the TF preprocessing
    code, _, err = _run(["stats", str(ref), "-o", str(out), "--format", "pytorch-fid", "--extractor", "clip"], capsys)
    assert code == 2 and "--format pytorch-fid fixes its networks" in err


def test_stats_format_edm2_is_a_plain_pickle_with_fid_and_fd_dinov2(setup, four, capsys, tmp_path):
    from test_dinov2 import write_meta_checkpoint

    from lightning_fid.engine._formats import read_reference_file
    from lightning_fid.extractors import DINOv2

    root, weights, _, _ = setup
    ref, _, images, direct = four
    dinov2 = write_meta_checkpoint(tmp_path / "dinov2_vitl14_pretrain.pth")  # ViT-L/14's format at toy size
    out = tmp_path / "ref.pkl"
    args = ["stats", str(ref), "-o", str(out), "--format", "edm2", "--inception-weights", weights]
    code, stdout, err = _run([*args, "--dinov2-weights", str(dinov2)], capsys)
    assert code == 0 and "fid and fd_dinov2 statistics" in stdout and "warning" not in err
    raw = out.read_bytes()
    assert b"numpy._core" not in raw  # numpy 1.x paths: EDM2's numpy 1.x environments can unpickle it
    with open(out, "rb") as f:
        stats = pickle.load(f)  # as NVlabs/edm2 calculate_metrics.py load_stats reads it
    assert sorted(stats) == ["fd_dinov2", "fid", "num_images"] and stats["num_images"] == 4
    _assert_moments(stats["fid"]["mu"], stats["fid"]["sigma"], direct["pool"])
    with pytest.warns(UserWarning, match="not the published"):
        features = DINOv2(dinov2, resize="torch")(images)  # EDM2's default resize_mode='torch'
    _assert_moments(stats["fd_dinov2"]["mu"], stats["fd_dinov2"]["sigma"], features)
    back = read_reference_file(out)
    assert back.format == "edm2" and torch.equal(back.moments["inception"].mu, torch.from_numpy(stats["fid"]["mu"]))


def test_stats_format_edm2_without_dinov2_weights_writes_fid_and_says_so(setup, four, capsys, tmp_path, monkeypatch):
    root, weights, _, _ = setup
    monkeypatch.setenv("LIGHTNING_FID_HOME", str(tmp_path / "empty"))  # no DINOv2 weights cached: none downloaded
    out = tmp_path / "fid_only.pkl"
    code, _, err = _run(
        ["stats", str(four[0]), "-o", str(out), "--format", "edm2", "--num", "2", "--inception-weights", weights],
        capsys,
    )
    assert code == 0 and "fd_dinov2 not written: no DINOv2 weights" in err
    with open(out, "rb") as f:
        assert sorted(pickle.load(f)) == ["fid", "num_images"]
    code, _, err = _run(["stats", str(four[0]), "-o", str(tmp_path / "x.npz"), "--format", "edm2"], capsys)
    assert code == 2 and "EDM2 reference files (--format edm2) end in .pkl" in err


@pytest.fixture(scope="module")
def dinov2_moments():
    from lightning_fid.metrics import frechet_distance

    rng = np.random.default_rng(7)
    mix = rng.standard_normal((1024, 64)) / 8
    sigma_a, sigma_b = mix @ mix.T + np.eye(1024), np.diag(np.linspace(0.5, 1.5, 1024))
    mu_a, mu_b = rng.standard_normal(1024) / 10, rng.standard_normal(1024) / 10
    return (mu_a, sigma_a), (mu_b, sigma_b), frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


# EDM's layout and ours go through score in test_stats_is_read_by_pytorch_fid_and_score_round_trips
# and test_bad_inputs' CLI cases
REFERENCE_FORMATS = ("pytorch-fid", "clean-fid", "edm2")


@pytest.mark.parametrize("fmt", REFERENCE_FORMATS)
def test_score_takes_each_reference_format_as_ref(tmp_path, capsys, dinov2_moments, fmt):
    (mu, sigma), (mu_g, sigma_g), expected = dinov2_moments
    ref = tmp_path / {"clean-fid": "ffhq_clean_custom_na.npz", "edm2": "img512.pkl"}.get(fmt, f"{fmt}.npz")
    if fmt in ("pytorch-fid", "clean-fid"):
        np.savez_compressed(ref, mu=mu, sigma=sigma)  # pytorch-fid's save_fid_stats, clean-fid's make_custom_stats
    else:  # edm2's save_stats
        ref.write_bytes(pickle.dumps({"num_images": 5000, "fd_dinov2": {"mu": mu, "sigma": sigma}}))
    gen = tmp_path / "gen.npz"
    Statistics(mu_g, sigma_g, 5000, metadata={"extractor": "dinov2-vit-l-14"}).save(gen)
    code, stdout, err = _run(["score", str(ref), str(gen), "--metrics", "fd_dinov2", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["fd_dinov2"] == pytest.approx(expected, rel=1e-12)
