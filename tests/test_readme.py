"""README.md and docs/ stay true: README's two commands are what CI runs, and every Python block of
README and of every docs page executes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.weights import write_random_inception

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_top_block_has_exactly_the_two_commands_and_ci_runs_the_second():
    lang, body = BLOCKS[0]
    commands = [line for line in body.strip().splitlines() if line.strip()]
    assert lang == "bash" and len(commands) == 2
    assert "examples/digits_gan.py" in commands[0] and "pip install" in commands[0]
    assert "pytest" in commands[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands[1].strip() in ci_lines


@pytest.fixture
def published_inception(tmp_path, monkeypatch):
    """Random weights in the published format, cached where InceptionV3() looks, with their hash
    standing in for the published one: the README's default-extractor code runs the real load path."""
    import hashlib

    from lightning_fid.extractors import inception as inception_mod
    from lightning_fid.extractors.weights import INCEPTION_WEIGHTS, WeightsSpec

    home = tmp_path / "home"
    home.mkdir()
    path = write_random_inception(home / INCEPTION_WEIGHTS.filename)
    spec = WeightsSpec(
        INCEPTION_WEIGHTS.name,
        INCEPTION_WEIGHTS.url,
        INCEPTION_WEIGHTS.filename,
        hashlib.sha256(path.read_bytes()).hexdigest(),
    )
    monkeypatch.setattr(inception_mod, "INCEPTION_WEIGHTS", spec)
    monkeypatch.setenv("LIGHTNING_FID_HOME", str(home))


PYTHON_BLOCKS = [
    (f"{page.relative_to(ROOT)} block {i}", body)
    for page in PAGES
    for i, body in enumerate(
        b for lang, b in re.findall(r"```(\w+)\n(.*?)```", page.read_text(), flags=re.S) if lang == "python"
    )
]


@pytest.mark.slow
@pytest.mark.parametrize("name, code", PYTHON_BLOCKS, ids=[name for name, _ in PYTHON_BLOCKS])
def test_python_block_runs(name, code, tmp_path, monkeypatch, published_inception):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, name, "exec"), {"__name__": name.replace(" ", "_")})


def test_docs_have_python_blocks_for_the_main_features():
    assert len(PYTHON_BLOCKS) >= 6 and any(name.startswith("README.md") for name, _ in PYTHON_BLOCKS)
    joined = "\n".join(code for _, code in PYTHON_BLOCKS)
    for name in ("GenerativeMetrics", "frechet_distance", "kid(", "cmmd(", "feature_dim"):
        assert name in joined


def test_readme_is_a_front_page_and_links_only_to_pages_that_exist():
    assert len(README.splitlines()) <= 260
    for link in re.findall(r"\]\((docs/[^)#]+)\)", README):
        assert (ROOT / link).is_file(), link
