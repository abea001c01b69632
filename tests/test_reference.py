"""resolve_reference on its own: every kind of source, the cache, and refusals."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from helpers.tiny import TinyEmbed, TinyFeatures, real_images, tiny_slots
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from lightning_fid import resolve_reference
from lightning_fid.engine._cache import StatsCache
from lightning_fid.engine._images import to_uint8
from lightning_fid.engine._real import RealOptions
from lightning_fid.engine._reference import forget_resolved
from lightning_fid.extractors.base import run_extractor

OPTIONS = RealOptions(input_range=(-1, 1), batch_size=5)


@pytest.fixture(autouse=True)
def _fresh_process_cache():
    forget_resolved()  # each test reads the disk cache or the data itself


def _slots(metrics=("fid", "kid"), seed=0):
    forget_resolved()
    return tiny_slots(metrics, TinyFeatures(seed=seed), TinyEmbed(seed=5))


def _direct(n=37):
    feats = run_extractor(TinyFeatures(), to_uint8(real_images(n), (-1, 1)), (0.0, 1.0)).double()
    return feats.mean(0), torch.cov(feats.T), feats


def _calls(slots):
    return slots[0].module.module.calls  # TinyFeatures counts its forward passes


def test_dataset_gives_exact_moments_and_features():
    ref = resolve_reference(TensorDataset(real_images(37)), _slots(), OPTIONS)
    mu, sigma, feats = _direct()
    stats = ref.stats["tiny-features"]
    assert stats.n == 37
    torch.testing.assert_close(stats.mu, mu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.sigma, sigma, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stats.features.double(), feats, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["loader", "iterable", "callable", "named", "folder", "dict"])
def test_every_source_kind_gives_the_same_statistics(tmp_path, kind):
    images = real_images(37)
    if kind == "loader":
        real = DataLoader(TensorDataset(images, torch.zeros(37)), batch_size=7)
    elif kind == "iterable":
        real = DataLoader(_Stream(images), batch_size=None)
    elif kind == "callable":
        real = lambda: TensorDataset(images)  # noqa: E731
    elif kind == "named":
        real = "train"
    elif kind == "dict":
        real = [{"pixels": img, "label": 0} for img in images]
        real = DataLoader(real, batch_size=4)
    else:
        real = tmp_path / "real"
        real.mkdir()
        for i, img in enumerate(to_uint8(images, (-1, 1))):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(real / f"{i:03d}.png")
        real = str(real)
    options = RealOptions(input_range=(-1, 1), batch_size=5, image_key="pixels" if kind == "dict" else None)
    ref = resolve_reference(real, _slots(), options, named={"train": lambda: TensorDataset(images)})
    mu, sigma, _ = _direct()
    torch.testing.assert_close(ref.stats["tiny-features"].mu, mu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ref.stats["tiny-features"].sigma, sigma, rtol=1e-10, atol=1e-12)


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, images):
        self.images = images

    def __iter__(self):
        yield from (self.images[i : i + 6] for i in range(0, len(self.images), 6))


def test_cache_hit_skips_the_real_pass_and_key_changes_recompute(tmp_path):
    cache = StatsCache(tmp_path)
    data = TensorDataset(real_images(37))
    first_slots = _slots()
    first = resolve_reference(data, first_slots, OPTIONS, cache=cache)
    assert _calls(first_slots) == 8  # ceil(37 / 5) batches
    again_slots = _slots()
    again = resolve_reference(data, again_slots, OPTIONS, cache=cache)
    assert _calls(again_slots) == 0 and again.key == first.key
    torch.testing.assert_close(again.stats["tiny-features"].sigma, first.stats["tiny-features"].sigma, rtol=0, atol=0)
    torch.testing.assert_close(
        again.stats["tiny-features"].features, first.stats["tiny-features"].features, rtol=0, atol=0
    )
    for changed in (
        dict(slots=_slots(), options=RealOptions(input_range=(-1, 1), batch_size=5, num_real=30)),
        dict(slots=_slots(seed=3), options=OPTIONS),  # other extractor weights
        dict(slots=_slots(("fid",)), options=OPTIONS),  # another slot content (no kept features)
        dict(slots=_slots(), options=RealOptions(input_range=(-1.1, 1.1), batch_size=5)),
    ):
        other = resolve_reference(data, changed["slots"], changed["options"], cache=cache)
        assert other.key != first.key and _calls(changed["slots"]) > 0


def test_corrupt_cache_is_recomputed_with_a_warning(tmp_path):
    cache = StatsCache(tmp_path)
    data = TensorDataset(real_images(37))
    first = resolve_reference(data, _slots(), OPTIONS, cache=cache)
    for path in tmp_path.glob("*.npz"):
        path.write_bytes(b"truncated")
    slots = _slots()
    with pytest.warns(UserWarning, match="ignoring unreadable statistics cache"):
        again = resolve_reference(data, slots, OPTIONS, cache=cache)
    assert _calls(slots) == 8
    torch.testing.assert_close(again.stats["tiny-features"].mu, first.stats["tiny-features"].mu, rtol=0, atol=0)


def test_npz_file_serves_fid_only_and_unknown_count_is_none(tmp_path):
    mu, sigma, _ = _direct()
    path = tmp_path / "pytorch_fid.npz"
    np.savez(path, mu=mu.numpy(), sigma=sigma.numpy())  # no n; uncompressed, as EDM's fid.py ref writes
    with pytest.warns(UserWarning, match=r"\(edm: mu/sigma\) does not record which network computed it"):
        ref = resolve_reference(str(path), _slots(("fid",)), OPTIONS)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert ref.stats["tiny-features"].n is None and ref.key == f"edm:sha256:{sha}"  # the file's content, not its path
    assert ref.source == {"format": "edm", "file": str(path), "sha256": sha, "keys": {"*": "mu/sigma"}} | {
        "statistics": {"tiny-features": "mu/sigma"}
    }
    torch.testing.assert_close(ref.stats["tiny-features"].sigma, sigma, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(edm\) holds statistics only .* tiny-features features .* need the real"):
        resolve_reference(str(path), _slots(("fid", "kid")), OPTIONS)
    np.savez(path, mu=np.zeros(5), sigma=np.eye(5))
    with pytest.raises(ValueError, match="holds 5-d statistics but tiny-features gives 8-d"):
        resolve_reference(str(path), _slots(("fid",)), OPTIONS)


@pytest.mark.parametrize(
    "real, options, match",
    [
        (TensorDataset(torch.zeros(0, 3, 8, 8)), OPTIONS, "real data is empty"),
        (TensorDataset(real_images(1)), OPTIONS, "only 1 real sample"),
        (TensorDataset(real_images(9)), RealOptions(batch_size=5, num_real=20), "holds only 9 samples"),
        ("val", OPTIONS, "only the callback can reach"),
        (42, OPTIONS, "real data must be a DataLoader"),
        (TensorDataset(real_images(9) * 3), OPTIONS, "real data span .* set RealData.input_range"),
    ],
)
def test_refusals_name_the_problem(real, options, match):
    with pytest.raises(ValueError, match=match):
        resolve_reference(real, _slots(("fid",)), options)
