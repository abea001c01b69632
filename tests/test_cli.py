"""lightning-fid stats / score: round trips with pytorch-fid's loader, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.weights import write_random_inception
from PIL import Image
from pytorch_fid.fid_score import compute_statistics_of_path

from lightning_fid import cli

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
    weights = write_random_inception(root / "inception.pth")
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
    assert code == 2 and "small.npz holds 8-d statistics but inception-v3-tf-2015-12-05 gives 2048-d" in err
    code, _, err = _run(["score", str(small), str(b), "--metrics", "kid", "--inception-weights", weights], capsys)
    assert code == 2 and "need an image folder" in err
    code, _, err = _run(["score", str(a), str(tmp_path / "nope"), "--inception-weights", weights], capsys)
    assert code == 2 and "neither an image folder" in err
