"""The layout holds: the engine, the metrics, the networks and the CLI never import Lightning; modules and
classes stay small; no formatter escapes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_fid"

BLOCK_LIGHTNING = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("lightning", "pytorch_lightning"):
            raise ImportError(f"{name} is blocked: this module must not need Lightning")
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize(
    "module",
    [
        "lightning_fid",
        "lightning_fid.engine",
        "lightning_fid.metrics",
        "lightning_fid.extractors",
        "lightning_fid.cli",
        "lightning_fid.standalone",
    ],
)
def test_imports_without_lightning(module):
    code = BLOCK_LIGHTNING + f"import {module}\nprint(sorted(m for m in sys.modules if m.startswith('lightning.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_engine_evaluates_without_lightning(tmp_path):
    code = (
        BLOCK_LIGHTNING
        + """
import torch
from torch import nn
from torch.utils.data import TensorDataset
from lightning_fid.engine import Evaluator
from lightning_fid.metrics import KID
encoder = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())
evaluator = Evaluator(TensorDataset(torch.rand(20, 3, 8, 8) * 2 - 1), ["fid", KID(subsets=3, subset_size=10)],
                      sample_fn=lambda m, n, g: torch.rand(n, 3, 8, 8, generator=g) * 2 - 1,
                      feature_extractor=encoder, num_samples=20, batch_size=10, progress=False)
values, _ = evaluator.evaluate(nn.Linear(1, 1))
print(sorted(values))
"""
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['fid', 'fid_se', 'kid', 'kid_se', 'kid_std']"


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_over_about_300_lines_and_no_class_over_250():
    for path in _modules():
        lines = path.read_text().splitlines()
        assert len(lines) <= 320, f"{path.relative_to(PACKAGE)}: {len(lines)} lines"
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                assert size <= 250, f"{path.relative_to(PACKAGE)}: class {node.name} has {size} lines"


def test_no_formatter_escapes():
    for path in list(_modules()) + sorted(PACKAGE.parent.joinpath("tests").glob("*.py")):
        assert "fmt: " + "skip" not in path.read_text(), path.name
