"""Weight resolution: explicit path, cache, download with SHA-256 check, offline errors, DDP."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import torch
from helpers.dist import run_distributed
from helpers.http import CLOSED_PORT_PROXY, FileServer
from helpers.weights import write_random_inception

from lightning_fid import cli
from lightning_fid.extractors import InceptionV3, WeightsError, WeightsSpec, resolve_weights
from lightning_fid.extractors import weights as weights_mod


def _spec_for(path: Path, name: str = "inception", url: str = "http://127.0.0.1:9/w.pth") -> WeightsSpec:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return WeightsSpec(name=name, url=url, filename="w.pth", sha256=digest)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_FID_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def no_network(monkeypatch):
    """Every download goes through a proxy that refuses connections: the real offline code path."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, CLOSED_PORT_PROXY)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def served(tmp_path, no_network, monkeypatch):
    """A loopback HTTP server holding random weights in the published format (direct, no proxy)."""
    folder = tmp_path / "server"
    folder.mkdir()
    source = write_random_inception(folder / "w.pth", seed=3)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with FileServer(folder) as server:
        yield source, server


def test_cache_dir_defaults_under_torch_home(monkeypatch, tmp_path):
    monkeypatch.delenv("LIGHTNING_FID_HOME", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert weights_mod.cache_dir() == tmp_path / "th" / "lightning_fid"


def test_download_verifies_and_caches_then_works_offline(home, served):
    source, server = served
    spec = _spec_for(source, url=server.url("w.pth"))
    path = resolve_weights(spec)
    assert path == home / "w.pth" and path.read_bytes() == source.read_bytes()
    assert server.requests == ["/w.pth"]
    server.server.shutdown()  # offline from now on
    assert resolve_weights(spec) == path  # the cached file is used
    assert server.requests == ["/w.pth"]


def test_download_with_wrong_hash_is_discarded(home, served):
    _, server = served
    spec = WeightsSpec("inception", server.url("w.pth"), "w.pth", "0" * 64)
    with pytest.raises(WeightsError, match="SHA-256 is .* not the published 000"):
        resolve_weights(spec)
    assert not (home / "w.pth").exists() and not list(home.iterdir())  # no partial file left behind


def test_cached_file_with_wrong_hash_is_refused(home, no_network, tmp_path):
    source = write_random_inception(tmp_path / "x.pth")
    spec = _spec_for(source)
    home.mkdir(parents=True)
    (home / "w.pth").write_bytes(source.read_bytes()[:-10] + b"corrupted!")
    with pytest.raises(WeightsError, match="refusing cached weights .*w.pth: its SHA-256"):
        resolve_weights(spec)


def test_offline_error_names_url_path_and_command(home, no_network):
    spec = weights_mod.INCEPTION_WEIGHTS
    start = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        InceptionV3()
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert spec.url in message
    assert str(home / spec.filename) in message
    assert "lightning-fid download inception" in message


def test_explicit_path_is_used_and_unreadable_one_is_named(tmp_path, home, no_network):
    path = write_random_inception(tmp_path / "mine.pth")
    with pytest.warns(UserWarning, match="not the published inception weights"):
        assert resolve_weights(weights_mod.INCEPTION_WEIGHTS, path) == path
    with pytest.raises(WeightsError, match="nothere.pth does not exist"):
        resolve_weights(weights_mod.INCEPTION_WEIGHTS, tmp_path / "nothere.pth")


def test_cli_download(home, served, monkeypatch, capsys, tmp_path):
    source, server = served
    monkeypatch.setitem(weights_mod.PUBLISHED, "inception", _spec_for(source, url=server.url("w.pth")))
    target = tmp_path / "fetched"
    assert cli.main(["download", "inception", "--dir", str(target)]) == 0
    assert (target / "w.pth").is_file() and "downloaded and verified" in capsys.readouterr().out
    assert cli.main(["download", "inception", "--dir", str(target)]) == 0
    assert "already present" in capsys.readouterr().out and server.requests == ["/w.pth"]


def test_cli_download_offline_fails_with_message(home, no_network, capsys):
    assert cli.main(["download", "clip"]) == 2
    err = capsys.readouterr().err
    assert "ViT-L-14-336px.pt" in err and "openaipublic" in err


def _ddp_download_worker(rank, world, home, url, sha):
    import os

    from lightning_fid.extractors import weights as wm

    os.environ["LIGHTNING_FID_HOME"] = home
    os.environ["no_proxy"] = "127.0.0.1"
    path = wm.resolve_weights(wm.WeightsSpec("inception", url, "w.pth", sha))
    return {"path": str(path)}


@pytest.mark.multiprocess
def test_only_rank_zero_downloads(tmp_path, served):
    source, server = served
    home = tmp_path / "ddp_home"
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    results = run_distributed(_ddp_download_worker, 3, tmp_path, str(home), server.url("w.pth"), sha)
    assert server.requests == ["/w.pth"]  # one download for three ranks
    assert {r["path"] for r in results} == {str(home / "w.pth")}
    assert torch.load(home / "w.pth", weights_only=True).keys() == torch.load(source, weights_only=True).keys()
