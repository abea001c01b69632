"""benchmarks/comparability.py on a small configuration: the statements its README table makes still hold.

Every peer runs its own pipeline (folders or tensors -> number) with the same random weights; the claims
are the ones the script prints under its tables (``check_claims``). clean-fid is optional and not a test
dependency, so it is left out here (the full script runs it when installed).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch_fidelity")
pytest.importorskip("pytorch_fid")
pytest.importorskip("torchmetrics")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "comparability.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("comparability_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


cmp = _load_script()

# Statements that must be evaluated (not skipped for want of a peer) on the small run.
REQUIRED = [
    "the Python path equals the CLI",
    "pytorch-fid's network on our preprocessing gives our features",
    "every FID formula",
    "torch-fidelity equals ours",
    "torchmetrics with antialias=False equals ours",
    "torchmetrics' default (antialias=True) equals ours at 299",
    "torchmetrics' KID (antialias fixed True) equals ours at 299",
    "torchmetrics' normalize=True on float generator output differs",
    "pytorch-fid differs from ours by more than 1e-3 at every size, 299 included",
    "the normalisation alone",
    "at 299, pytorch-fid's whole difference is the normalisation",
    "pytorch-fid's recipe",
    "KID on subsets smaller than N differs",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    peers = tuple(p for p in cmp.PEERS if p != "clean-fid")
    config = cmp.Config(**{**cmp.SMALL.__dict__, "peers": peers})
    return cmp.run(config, workdir=tmp_path_factory.mktemp("comparability"))


@pytest.mark.slow
def test_every_claim_holds(report):
    results = dict(cmp.claim_results(report))
    for start in REQUIRED:
        assert any(text.startswith(start) for text in results), f"claim not evaluated: {start}"
    assert cmp.check_claims(report) == []


@pytest.mark.slow
def test_key_numbers(report):
    rel = cmp.relative(report)
    assert set(rel) == {"32", "299"}
    for name, row in rel.items():
        assert abs(row["tf.fid"]) <= 1e-5 and abs(row["python.fid"]) <= 1e-9, name
        assert abs(row["x.norm"]) > 1e-3, name  # 2x/255-1 vs (x-128)/128 matters at every size
        assert abs(row["f.pf"]) <= 1e-5, name  # pytorch-fid = torch bilinear on x/255, 2x-1, same network
    assert abs(rel["299"]["pf.fid"]) > 1e-3  # no resize at 299: the normalisation alone
    assert abs(rel["299"]["pf.fid"] - rel["299"]["x.norm"]) <= 1e-5
    assert abs(rel["32"]["tm.fid"]) > 1e-3 and abs(rel["299"]["tm.fid"]) <= 1e-5  # antialiased resize


@pytest.mark.slow
def test_markdown_labels_random_weights(report, tmp_path):
    text = cmp.render(report)
    assert "RANDOM Inception-v3 weights" in text and "NOT the published" in text
    assert "| pytorch-fid `calculate_fid_given_paths` | FID |" in text
    assert "✗" not in text


def test_rejects_unknown_sets():
    with pytest.raises(SystemExit):
        cmp.main(["--sets", "32,bogus"])


@pytest.mark.slow
def test_readme_states_what_the_run_shows(report):
    """The comparability page (docs/comparability.md) is the script's output: its claims and causes still hold."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "comparability.md").read_text()
    results = dict(cmp.claim_results(report))
    for text, holds in results.items():
        if any(text.startswith(start) for start in REQUIRED):
            assert holds, text
            assert f"- ✓ {text.split(' (')[0]}" in readme or text.split(" (")[0] in readme, text
    for row in (
        "| torch-fidelity `calculate_metrics` (folders) | FID |",
        "| pytorch-fid `calculate_fid_given_paths` | FID |",
        'InceptionV3(preprocess="pytorch-fid")',
    ):
        assert row in readme, row
