"""Bad inputs, faults and misuse: each case asserts its exact outcome (a clear error, or a warning and
an honest value). Grouped by where the bad input enters; every table row is one case."""

from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.tiny import TinyGAN, fit_recording_steps, make_callback, real_images, tiny_slots
from torch.utils.data import TensorDataset

from lightning_fid import RealData, load_statistics
from lightning_fid.engine._accumulators import FeatureMoments
from lightning_fid.metrics import CMMD, FID, KID, cmmd, frechet_distance, kid, reference_factor, sqrtm_psd


@dataclass(frozen=True)
class Raises:
    error: type[BaseException]
    fragment: str  # a regular expression the message must match
    before_training: bool = True


@dataclass(frozen=True)
class Value:
    check: Callable[[Any], bool]  # what the returned value must satisfy
    warning: str | None = None


# ---------------------------------------------------------------- generator output (in a real Trainer)
def _fit(tmp_path, model=None, **kw):
    """Fit two epochs; ``_fit.trained`` says whether a training step ran before the outcome."""
    try:
        return fit_recording_steps(tmp_path, model, **kw)
    finally:
        _fit.trained = fit_recording_steps.trained


def _real(data=None, **options):
    return RealData(TensorDataset(real_images(37)) if data is None else data, **options)


def _gen(fn):
    return {"sample_fn": lambda m, n, g: fn(m.sample_images(n, g), n)}


GENERATOR = {
    "3-d output": ({"sample_fn": lambda m, n, g: torch.zeros(n, 3, 8)}, Raises(ValueError, "returned shape")),
    "short batch": ({"sample_fn": lambda m, n, g: torch.zeros(n - 1, 3, 8, 8)}, Raises(ValueError, "returned shape")),
    "channels last": (_gen(lambda x, n: x.permute(0, 2, 3, 1)), Raises(ValueError, "channels-last")),
    "alpha channel": ({"sample_fn": lambda m, n, g: torch.zeros(n, 4, 8, 8)}, Raises(ValueError, "alpha channel")),
    "two channels": ({"sample_fn": lambda m, n, g: torch.zeros(n, 2, 8, 8)}, Raises(ValueError, r"1 \(grey\) or 3")),
    "a list": ({"sample_fn": lambda m, n, g: [torch.zeros(3, 8, 8)] * n}, Raises(ValueError, "must return a tensor")),
    "numpy array": ({"sample_fn": lambda m, n, g: np.zeros((n, 3, 8, 8))}, Raises(ValueError, "must return a tensor")),
    "0..255 floats": (
        _gen(lambda x, n: (x + 1) * 127.5),
        Raises(ValueError, "generated images span .* set input_range"),
    ),
    "sigmoid declared tanh": (
        _gen(lambda x, n: (x + 1) / 2),
        Raises(ValueError, r"upper half of input_range=\(-1, 1\).*input_range=\(0, 1\)"),
    ),
    "tanh declared sigmoid": (
        dict(input_range=(0, 1), range_check=True, real=_real(input_range=(-1, 1))),
        Raises(ValueError, r"generated images span .* input_range is \(0, 1\)"),
    ),
    "uint8 declared float": (
        _gen(lambda x, n: ((x + 1) * 127.5).to(torch.uint8)),
        Raises(ValueError, "declare input_range='uint8'"),
    ),
    "float declared uint8": (
        dict(input_range="uint8", real=_real(input_range=(-1, 1))),
        Raises(ValueError, "input_range='uint8' but"),
    ),
    "int64 images": (_gen(lambda x, n: x.long()), Raises(ValueError, "floating point or uint8")),
    "NaN at start": (_gen(lambda x, n: x * float("nan")), Raises(ValueError, "non-finite")),
    "inf at start": (_gen(lambda x, n: x / 0.0), Raises(ValueError, "non-finite")),
    "breaks only at full batch": (_gen(lambda x, n: x if n < 5 else x[:-1]), Raises(ValueError, "returned shape")),
    "empty image": (_gen(lambda x, n: x[:, :, :0]), Raises(ValueError, "is empty")),
    "sample_fn raises": ({"sample_fn": lambda m, n, g: 1 / 0}, Raises(ZeroDivisionError, "division by zero")),
    "bfloat16 output": (_gen(lambda x, n: x.to(torch.bfloat16)), Value(lambda cb: math.isfinite(cb.history[0]["fid"]))),
    "requires grad": (
        _gen(lambda x, n: x.detach().requires_grad_()),
        Value(lambda cb: math.isfinite(cb.history[0]["fid"])),
    ),
    "sigmoid, check silenced": (
        dict(range_check=False, **_gen(lambda x, n: (x + 1) / 2)),
        Value(lambda cb: math.isfinite(cb.history[0]["fid"])),
    ),
}


@pytest.mark.parametrize("name", sorted(GENERATOR))
def test_generator_output(tmp_path, name):
    kwargs, outcome = GENERATOR[name]
    _check(outcome, lambda: _fit(tmp_path, metrics=("fid",), **kwargs))
    if isinstance(outcome, Raises) and outcome.before_training:
        assert not _fit.trained, "the error must come before the first training step"


def _check(outcome, action):
    if isinstance(outcome, Raises):
        with pytest.raises(outcome.error, match=outcome.fragment):
            action()
        return None
    if outcome.warning is not None:
        with pytest.warns(UserWarning, match=outcome.warning):
            value = action()
    else:
        value = action()
    assert outcome.check(value), value
    return value


# ---------------------------------------------------------------- real data
def _zero_one(n=37):
    return (real_images(n) + 1) / 2


REAL = {
    "ToTensor [0,1] declared (-1,1)": (
        dict(real=TensorDataset(_zero_one())),
        Raises(
            ValueError, r"real data span .* upper half of RealData.input_range=\(-1, 1\).*RealData.input_range=\(0, 1\)"
        ),
    ),
    "0..255 floats": (
        dict(real=TensorDataset(_zero_one() * 255)),
        Raises(ValueError, "real data span .* set RealData.input_range"),
    ),
    "declared right": (
        dict(real=_real(TensorDataset(_zero_one()), input_range=(0, 1))),
        Value(lambda cb: cb.history[0]["fid"] > 0),
    ),
    "uint8 tensors": (
        dict(real=TensorDataset((_zero_one() * 255).round().to(torch.uint8))),
        Value(lambda cb: cb.history[0]["fid"] > 0),
    ),
    "empty": (dict(real=TensorDataset(torch.zeros(0, 3, 8, 8))), Raises(ValueError, "real data is empty")),
    "one sample": (
        dict(real=TensorDataset(real_images(1)), metrics=("fid",)),
        Raises(ValueError, "only 1 real sample"),
    ),
    "num_real over size": (dict(real=_real(num_real=50)), Raises(ValueError, "holds only 37")),
    "NaN pixels": (
        dict(real=TensorDataset(real_images(37) * float("nan"))),
        Raises(ValueError, "real data contain .* non-finite"),
    ),
    "channels last": (
        dict(real=TensorDataset(real_images(37).permute(0, 2, 3, 1))),
        Raises(ValueError, "real data .*channels-last"),
    ),
    "dict without image key": (
        dict(real=torch.utils.data.DataLoader([{"pixels": x} for x in real_images(37)], batch_size=4)),
        Raises(ValueError, "pass image_key"),
    ),
    "not data": (dict(real=42), Raises(ValueError, "real data must be a DataLoader")),
    "train: loaders given to fit": (dict(real="train"), Value(lambda cb: cb.history[0]["fid"] > 0)),
    "missing folder": (dict(real="/nonexistent/folder"), Raises(ValueError, "no such image folder")),
    "silenced check": (
        dict(real=_real(TensorDataset(_zero_one()), range_check=False)),
        Value(lambda cb: cb.history[0]["fid"] > 0),
    ),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_data(tmp_path, name):
    kwargs, outcome = REAL[name]
    kwargs = {"metrics": ("fid",), **kwargs}
    _check(outcome, lambda: _fit(tmp_path, **kwargs))
    if isinstance(outcome, Raises):
        assert not _fit.trained


# ---------------------------------------------------------------- statistics files
class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/lightning_fid_pickle_payload_ran"),))


def _npz(tmp_path, **arrays):
    path = tmp_path / "stats.npz"
    np.savez(path, **arrays)
    return path


def _psd(d=6, seed=0):
    x = np.random.default_rng(seed).standard_normal((50, d))
    return x.mean(0), np.cov(x, rowvar=False)


MU, SIGMA = _psd()
NOT_PSD = SIGMA - 2 * np.eye(6) * np.linalg.eigvalsh(SIGMA).max()
ASYMMETRIC = SIGMA + np.triu(np.ones((6, 6)), 1)

STATS_FILES = {
    "ours": (dict(mu=MU, sigma=SIGMA, n=np.int64(50)), Value(lambda s: s.n == 50)),
    "pytorch-fid (no n)": (dict(mu=MU, sigma=SIGMA), Value(lambda s: s.n is None)),
    "EDM float32": (
        dict(mu=MU.astype(np.float32), sigma=SIGMA.astype(np.float32)),
        Value(lambda s: s.sigma.dtype == torch.float64),
    ),
    "NaN in sigma": (dict(mu=MU, sigma=SIGMA * np.nan), Raises(ValueError, "stats.npz: sigma contains")),
    "inf in mu": (dict(mu=MU / 0, sigma=SIGMA), Raises(ValueError, "stats.npz: mu contains")),
    "asymmetric": (dict(mu=MU, sigma=ASYMMETRIC), Raises(ValueError, "stats.npz: sigma is not symmetric")),
    "not PSD": (dict(mu=MU, sigma=NOT_PSD), Raises(ValueError, "stats.npz: sigma is not positive semi-definite")),
    "n = 1": (dict(mu=MU, sigma=SIGMA, n=np.int64(1)), Raises(ValueError, "stats.npz: n = 1")),
    "n = -5": (
        dict(mu=MU, sigma=SIGMA, n=np.int64(-5)),
        Raises(ValueError, r"n must be one non-negative integer sample count, got array\(-5\)"),
    ),
    "n = 3.5": (dict(mu=MU, sigma=SIGMA, n=np.float64(3.5)), Raises(ValueError, "n must be one non-negative integer")),
    "n an array": (dict(mu=MU, sigma=SIGMA, n=np.arange(3)), Raises(ValueError, "n must be one non-negative integer")),
    "no sigma": (dict(mu=MU), Raises(ValueError, "needs 'mu' and 'sigma'")),
    "sigma 1-d": (dict(mu=MU, sigma=MU), Raises(ValueError, r"expected \(d,\) and \(d, d\)")),
    "mu 2-d": (dict(mu=SIGMA, sigma=SIGMA), Raises(ValueError, r"expected \(d,\) and \(d, d\)")),
    "shapes differ": (dict(mu=MU[:5], sigma=SIGMA), Raises(ValueError, r"expected \(d,\) and \(d, d\)")),
    "complex": (dict(mu=MU.astype(complex), sigma=SIGMA), Raises(ValueError, "real numbers")),
    "pickled object": (
        dict(mu=np.array([_Payload()], dtype=object), sigma=SIGMA),
        Raises(ValueError, "cannot read statistics file"),
    ),
}


@pytest.mark.parametrize("name", sorted(STATS_FILES))
def test_statistics_files(tmp_path, name):
    arrays, outcome = STATS_FILES[name]
    Path("/tmp/lightning_fid_pickle_payload_ran").unlink(missing_ok=True)
    path = _npz(tmp_path, **arrays)
    _check(outcome, lambda: load_statistics(path))
    assert not Path("/tmp/lightning_fid_pickle_payload_ran").exists()  # a pickle payload never runs


def test_missing_and_corrupt_statistics_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_statistics(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read statistics file .*bad.npz"):
        load_statistics(tmp_path / "bad.npz")


def test_bad_statistics_file_fails_before_training(tmp_path):
    path = _npz(tmp_path, mu=np.zeros(8), sigma=-np.eye(8))
    with pytest.raises(ValueError, match="stats.npz: sigma is not positive semi-definite"):
        _fit(tmp_path, real=str(path), metrics=("fid",))
    assert not _fit.trained


# ---------------------------------------------------------------- metric functions
R = torch.from_numpy(np.random.default_rng(0).random((60, 6)))
F = torch.from_numpy(np.random.default_rng(1).random((50, 6)) + 0.1)

METRIC_FUNCTIONS = {
    "FID dims differ": (
        lambda: frechet_distance(MU, SIGMA, MU[:5], SIGMA[:5, :5]),
        Raises(ValueError, "dimension mismatch"),
    ),
    "FID asymmetric sigma1": (
        lambda: frechet_distance(MU, ASYMMETRIC, MU, SIGMA),
        Raises(ValueError, "sigma1 is not symmetric"),
    ),
    "FID sigma2 not PSD": (
        lambda: frechet_distance(MU, SIGMA, MU, NOT_PSD),
        Raises(ValueError, "sigma2 is not positive semi-definite"),
    ),
    "FID NaN mu": (lambda: frechet_distance(MU * np.nan, SIGMA, MU, SIGMA), Raises(ValueError, "mu1 contains")),
    "FID of a set with itself": (lambda: frechet_distance(MU, SIGMA, MU, SIGMA), Value(lambda v: v == 0.0)),
    "sqrtm of not PSD": (lambda: sqrtm_psd(NOT_PSD), Raises(ValueError, "not positive semi-definite")),
    "factor of asymmetric": (lambda: reference_factor(ASYMMETRIC), Raises(ValueError, "not symmetric")),
    "KID subset size 1": (lambda: kid(R, F, 5, 1), Raises(ValueError, "subset_size must be >= 2")),
    "KID no subsets": (lambda: kid(R, F, 0, 10), Raises(ValueError, "num_subsets must be >= 1")),
    "KID 1-d features": (lambda: kid(R[:, 0], F, 5, 10), Raises(ValueError, "2-D")),
    "KID NaN features": (lambda: kid(R * np.nan, F, 5, 10), Raises(ValueError, "real_features contains")),
    "KID dims differ": (lambda: kid(R, F[:, :5], 5, 10), Raises(ValueError, "feature dimension mismatch")),
    "KID one real row": (lambda: kid(R[:1], F, 5, 10), Raises(ValueError, "at least 2 samples")),
    "KID int16 features": (
        lambda: kid(R.mul(100).to(torch.int16), F.mul(100).to(torch.int16), 5, 10),
        Value(lambda v: v == kid(R.mul(100).to(torch.int16).double(), F.mul(100).to(torch.int16).double(), 5, 10)),
    ),
    "CMMD sigma 0": (lambda: cmmd(R, F, sigma=0.0), Raises(ValueError, "sigma")),
    "CMMD sigma negative": (lambda: cmmd(R, F, sigma=-1.0), Raises(ValueError, "sigma")),
    "CMMD sigma NaN": (lambda: cmmd(R, F, sigma=float("nan")), Raises(ValueError, "sigma")),
    "bool features": (lambda: kid(R > 0.5, F > 0.5, 5, 10), Raises(ValueError, "real numbers")),
    "complex features": (lambda: kid(R.to(torch.complex64), F, 5, 10), Raises(ValueError, "real numbers")),
    "moments of dim 0": (lambda: FeatureMoments(0), Raises(ValueError, "dim must be positive")),
    "options: 0 subsets": (lambda: KID(subsets=0), Raises(ValueError, "KID subsets")),
    "options: inf scale": (lambda: CMMD(scale=float("inf")), Raises(ValueError, "CMMD scale")),
}


@pytest.mark.parametrize("name", sorted(METRIC_FUNCTIONS))
def test_metric_functions(name):
    action, outcome = METRIC_FUNCTIONS[name]
    _check(outcome, action)


def test_pickle_payload_in_weights_never_runs(tmp_path):
    from lightning_fid.extractors import InceptionV3, WeightsError

    path = tmp_path / "weights.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv": _Payload()}, f)
    Path("/tmp/lightning_fid_pickle_payload_ran").unlink(missing_ok=True)
    with pytest.warns(UserWarning, match="not the published"), pytest.raises(WeightsError, match="cannot load weights"):
        InceptionV3(path)
    assert not Path("/tmp/lightning_fid_pickle_payload_ran").exists()


# ---------------------------------------------------------------- image files
def _image(tmp_path, mode, array):
    from PIL import Image

    folder = tmp_path / "img"
    folder.mkdir(exist_ok=True)
    path = folder / ("x.tif" if mode in ("I", "F", "CMYK") else "x.png")
    Image.fromarray(array).convert(mode).save(path) if mode not in ("I;16", "I", "F") else Image.fromarray(array).save(
        path
    )
    return path


RAMP8 = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
RGB8 = np.stack([RAMP8, RAMP8[::-1], RAMP8.T], axis=2)
IMAGE_FILES = {
    "RGB": ("RGB", RGB8, Value(lambda t: torch.equal(t.permute(1, 2, 0), torch.from_numpy(RGB8)))),
    "grey L": ("L", RAMP8, Value(lambda t: torch.equal(t[0], torch.from_numpy(RAMP8)) and torch.equal(t[0], t[2]))),
    "16-bit grey (scaled, not clipped)": (
        "I;16",
        RAMP8.astype(np.uint16) * 257,
        Value(lambda t: torch.equal(t[0], torch.from_numpy(RAMP8))),
    ),
    "palette": ("P", RGB8, Value(lambda t: t.shape == (3, 64, 64) and t.dtype == torch.uint8)),
    "RGBA (alpha dropped)": ("RGBA", RGB8, Value(lambda t: torch.equal(t.permute(1, 2, 0), torch.from_numpy(RGB8)))),
    "LA": ("LA", RAMP8, Value(lambda t: torch.equal(t[1], torch.from_numpy(RAMP8)))),
    "1-bit": ("1", RAMP8, Value(lambda t: set(t.unique().tolist()) <= {0, 255})),
    "CMYK": ("CMYK", RGB8, Value(lambda t: t.shape == (3, 64, 64))),
    "32-bit integer": ("I", RAMP8.astype(np.int32) * 1000, Raises(ValueError, r"x.tif: 32-bit integer image")),
    "32-bit float": ("F", RAMP8.astype(np.float32) / 255, Raises(ValueError, r"x.tif: 32-bit float image")),
}


@pytest.mark.parametrize("name", sorted(IMAGE_FILES))
def test_image_files(tmp_path, name):
    from lightning_fid.engine._image_files import read_image

    mode, array, outcome = IMAGE_FILES[name]
    path = _image(tmp_path, mode, array)
    _check(outcome, lambda: read_image(path))


def test_unreadable_image_is_named(tmp_path):
    from lightning_fid.engine._image_files import read_image

    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        read_image(path)


# ---------------------------------------------------------------- cache
def _resolve(tmp_path, cache_dir=None, **options):
    from helpers.tiny import TinyFeatures

    from lightning_fid import resolve_reference
    from lightning_fid.engine._cache import StatsCache
    from lightning_fid.engine._real import RealOptions

    data = options.pop("data", TensorDataset(real_images(37)))
    slots = tiny_slots(("fid",), options.pop("extractor", TinyFeatures()))
    cache = StatsCache(cache_dir or tmp_path / "cache")
    return resolve_reference(data, slots, RealOptions(input_range=(-1, 1), batch_size=5, **options), cache=cache), slots


def _transform(batch):
    return batch[0]


CACHE = {
    "lambda transform: not cached, says so": (
        dict(transform=lambda b: b[0]),
        Value(lambda r: r[0].key.startswith("uncached"), "no stable identity"),
    ),
    "lambda with reference_id: cached": (
        dict(transform=lambda b: b[0], reference_id="cifar-train-v1"),
        Value(lambda r: not r[0].key.startswith("uncached")),
    ),
    "module-level transform: cached": (
        dict(transform=_transform),
        Value(lambda r: not r[0].key.startswith("uncached")),
    ),
    "lambda collate: not cached": (
        dict(
            data=torch.utils.data.DataLoader(
                TensorDataset(real_images(37)), collate_fn=lambda b: torch.stack([x[0] for x in b])
            )
        ),
        Value(lambda r: r[0].key.startswith("uncached"), "collate_fn has no stable identity"),
    ),
}


@pytest.mark.parametrize("name", sorted(CACHE))
def test_cache_identity(tmp_path, name):
    options, outcome = CACHE[name]
    _check(outcome, lambda: _resolve(tmp_path, **options))


def test_cache_key_covers_extractor_configuration(tmp_path):
    from helpers.tiny import TinyFeatures

    class Pooled(TinyFeatures):  # same weights, another configuration
        def __init__(self, pool):
            super().__init__()
            self.pool = torch.nn.AvgPool2d(pool)

    a, _ = _resolve(tmp_path, extractor=Pooled(1))
    b, slots = _resolve(tmp_path, extractor=Pooled(2))
    assert a.key != b.key and slots[0].module.module.calls > 0  # recomputed, not reused


@pytest.mark.parametrize("how", ["read-only folder", "a file where the folder should be"])
def test_unwritable_cache_warns_and_continues(tmp_path, how):
    import os

    if how == "read-only folder":
        folder = tmp_path / "ro"
        folder.mkdir()
        os.chmod(folder, 0o500)
        if os.access(folder, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: a read-only folder is still writable")
    else:
        folder = tmp_path / "file"
        folder.write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot write the statistics cache"):
        reference, _ = _resolve(tmp_path, cache_dir=folder)
    assert reference.stats["tiny-features"].n == 37


# ---------------------------------------------------------------- resume
def _state(**changes):
    state = {
        "history": [{"epoch": 0, "step": 2, "fid": 1.0}],
        "best": 1.0,
        "seed": 0,
        "num_samples": 23,
        "metrics": [FID().identity()],
    }
    state.update(changes)
    return state


RESUME = {
    "matching": (_state(), Value(lambda cb: cb.history == [{"epoch": 0, "step": 2, "fid": 1.0}])),
    "other seed": (_state(seed=5), Value(lambda cb: cb.evaluator.seed == 5, "checkpoint's seed=5 wins over seed=0")),
    "other metrics": (
        _state(metrics=[KID(subset_size=10).identity()]),
        Value(
            lambda cb: [m.key for m in cb.metrics] == ["fid"],
            r"checkpoint evaluated \['KID\(subsets=100, subset_size=10, seed=None\)\[kid\]'\]; the constructor's \['FID\(\)\[fid\]'\] win",
        ),
    ),
    "other metric option": (
        _state(metrics=[KID(subset_size=10).identity()]),
        Value(lambda cb: cb.metrics[0].subset_size == 5, r"subset_size=10.*constructor's .*subset_size=5.* win"),
        dict(metrics=(KID(subset_size=5),)),
    ),
    "0.1 checkpoint: names": (
        _state(metrics=["fid"]),
        Value(lambda cb: cb.history == [{"epoch": 0, "step": 2, "fid": 1.0}]),
    ),
    "0.1 checkpoint: other names": (
        _state(metrics=["kid"]),
        Value(lambda cb: len(cb.history) == 1, r"evaluated \[\"'kid'\"\]; the constructor's \[\"'fid'\"\] win"),
    ),
    "metrics not a list": (_state(metrics="fid"), Raises(ValueError, "'metrics' must be a list")),
    "other num_samples": (
        _state(num_samples=99),
        Value(lambda cb: cb.evaluator.num_samples == 23, "constructor wins.*checkpoint used 99"),
    ),
    "history not a list": (_state(history="oops"), Raises(ValueError, "'history' must be a list")),
    "history of numbers": (_state(history=[1, 2]), Raises(ValueError, "'history' must be a list of dicts")),
    "best a string": (_state(best="low"), Raises(ValueError, "'best' must be a number")),
    "seed a float": (_state(seed=1.5), Raises(ValueError, "'seed' must be an integer")),
}


@pytest.mark.parametrize("name", sorted(RESUME))
def test_resume_state(name):
    state, outcome, *kwargs = RESUME[name]
    cb = make_callback(**{"metrics": ("fid",), **(kwargs[0] if kwargs else {})})

    def load():
        cb.load_state_dict(state)
        return cb

    _check(outcome, load)


# ---------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("cli_bad")
    folder = root / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray((np.random.default_rng(i).random((16, 16, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    # Inception-sized (2048-d): the CLI scores FID on Inception statistics only
    np.savez(root / "a.npz", mu=MU_2048, sigma=SIGMA_2048, n=np.int64(50))
    np.savez(root / "b.npz", mu=MU_2048 + 0.1, sigma=SIGMA_2048)  # no n: pytorch-fid's format
    np.savez(root / "bad.npz", mu=MU_2048, sigma=-SIGMA_2048)
    return root


MU_2048, SIGMA_2048 = np.linspace(-1, 1, 2048), np.diag(np.linspace(0.5, 2.0, 2048))


CLI = {
    "zero subsets": (["score", "{a}", "{b}", "--kid-subsets", "0"], "--kid-subsets must be at least 1"),
    "subset size 1": (["score", "{a}", "{b}", "--kid-subset-size", "1"], "--kid-subset-size must be at least 2"),
    "batch size 0": (["score", "{a}", "{b}", "--batch-size", "0"], "--batch-size must be at least 1"),
    "num 1": (["stats", "{images}", "-o", "{out}", "--num", "1"], "--num must be at least 2"),
    "bogus device": (["score", "{a}", "{b}", "--device", "gpu7"], "--device 'gpu7' is not a torch device"),
    "cuda without gpu": (["score", "{a}", "{b}", "--device", "cuda"], "CUDA is not available"),
    "unknown metric": (["score", "{a}", "{b}", "--metrics", "fid,fd"], "unknown metric"),
    "per-class on folders": (["score", "{a}", "{b}", "--metrics", "intra_fid"], "per-class metrics need class labels"),
    "missing path": (["score", "{a}", "{root}/nope"], "neither an image folder nor an .npz"),
    "kid on npz": (["score", "{a}", "{b}", "--metrics", "kid"], "statistics only"),
    "bad statistics": (["score", "{a}", "{bad}"], "bad.npz: sigma is not positive semi-definite"),
    "stats of a file": (["stats", "{a}", "-o", "{out}"], "not a folder of images"),
    "stats output not npz": (["stats", "{images}", "-o", "{root}/out.txt"], "end in .npz"),
    "missing weights file": (
        ["stats", "{images}", "-o", "{out}", "--inception-weights", "{root}/none.pth"],
        "none.pth does not exist",
    ),
    "corrupt npz": (["score", "{a}", "{images}/0.png.npz"], "neither an image folder nor an .npz|not found"),
}


@pytest.mark.parametrize("name", sorted(CLI))
def test_cli_user_errors_exit_2_with_one_line(cli_files, name, capsys):
    from lightning_fid import cli

    argv, fragment = CLI[name]
    paths = {
        "a": cli_files / "a.npz",
        "b": cli_files / "b.npz",
        "bad": cli_files / "bad.npz",
        "root": cli_files,
        "images": cli_files / "images",
        "out": cli_files / "out.npz",
    }
    code = cli.main([arg.format(**paths) for arg in argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(fragment, err), err


def test_cli_two_npz_files_score_without_weights_and_json_null_count(cli_files, capsys, monkeypatch):
    from lightning_fid import cli

    monkeypatch.setenv("LIGHTNING_FID_HOME", str(cli_files / "no_weights_here"))
    assert cli.main(["score", str(cli_files / "a.npz"), str(cli_files / "b.npz"), "--json"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert values["n_a"] == 50 and values["n_b"] is None
    assert values["fid"] == pytest.approx(frechet_distance(MU_2048, SIGMA_2048, MU_2048 + 0.1, SIGMA_2048), rel=1e-12)


# ---------------------------------------------------------------- numerics
def test_kid_never_overflows_float32_silently():
    big_r = (R * 1e5).float()
    big_f = (F * 1e5).float()
    value = kid(big_r, big_f, 3, 20)
    exact = kid(big_r.double(), big_f.double(), 3, 20)
    assert all(math.isfinite(v) for v in value) and value[0] == pytest.approx(exact[0], rel=1e-5)


# ---------------------------------------------------------------- distributed: a failing rank
def _failing_rank_worker(rank, world, where):

    from lightning_fid import resolve_reference
    from lightning_fid.engine._pipeline import sample_and_extract
    from lightning_fid.engine._real import RealOptions
    from lightning_fid.engine._sampling import make_sampler

    slots = tiny_slots(("fid",))
    try:
        if where == "sampler":

            def sample(module, n, generator):
                if rank == 1:
                    raise RuntimeError("rank 1's generator broke")
                return module.sample_images(n, generator)

            sample_and_extract(
                make_sampler(sample, None),
                TinyGAN(),
                slots,
                num_samples=20,
                batch_size=5,
                seed=0,
                input_range=(-1, 1),
                device=torch.device("cpu"),
            )
        else:
            images = real_images(37) if rank == 0 else real_images(37) * float("nan")
            resolve_reference(TensorDataset(images), slots, RealOptions(input_range=(-1, 1), batch_size=5))
    except Exception as exc:  # every rank must get here, none may hang
        return f"{type(exc).__name__}: {exc}"
    return "no error"


@pytest.mark.multiprocess
@pytest.mark.parametrize("where", ["sampler", "real data"])
def test_a_failing_rank_stops_every_rank(tmp_path, where):
    from helpers.dist import run_distributed

    outcomes = run_distributed(_failing_rank_worker, 2, tmp_path, where)
    assert "failed on another rank" in outcomes[0], outcomes
    assert ("rank 1's generator broke" if where == "sampler" else "non-finite") in outcomes[1], outcomes
