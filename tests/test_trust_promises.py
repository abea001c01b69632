"""Trust by construction, classes 6 to 8 (see test_trust.py for 1 to 5): weights without a published
hash, the weak cases, and every README promise."""

from __future__ import annotations

import hashlib
import json
import math
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers.tiny import TinyFeatures, TinyGAN, loaders, make_callback, real_images, sample, trainer_kwargs
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_fid import FreshEarlyStopping, RealData, load_statistics
from lightning_fid.engine import Statistics
from lightning_fid.extractors.weights import WeightsError, WeightsSpec, pin_file, pin_first_use, resolve_verified
from lightning_fid.metrics import FID, InceptionScore, IntraFID, frechet_distance, kid


# ======================================================================== 6. weights without a published hash
@pytest.fixture
def unpublished(tmp_path, monkeypatch):
    """A weights spec like DINOv2's: no SHA-256, a known size; the cache in a temporary folder."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LIGHTNING_FID_HOME", str(home))
    payload = b"x" * 1000
    spec = WeightsSpec(name="vit", url="http://127.0.0.1:9/none", filename="vit.pth", sha256=None, size=len(payload))
    return spec, home, payload


def test_a_cached_copy_of_the_published_size_is_pinned_once_then_must_match(unpublished, capsys):
    spec, home, payload = unpublished
    (home / "vit.pth").write_bytes(payload)
    path, sha = resolve_verified(spec)
    assert sha == hashlib.sha256(payload).hexdigest() and not pin_file(spec).exists()
    pin_first_use(spec, path, sha)  # after its state dict loaded
    assert pin_file(spec).read_text().strip() == sha and "pinned this copy's" in capsys.readouterr().err
    pin_first_use(spec, path, sha)
    assert capsys.readouterr().err == ""  # printed once
    assert resolve_verified(spec) == (path, sha)
    (home / "vit.pth").write_bytes(b"y" * 1000)  # the same size, other bytes
    with pytest.raises(WeightsError, match=r"differs from .*, pinned in .*vit.pth.sha256 when the first copy"):
        resolve_verified(spec)


def test_a_cached_copy_of_another_size_is_refused(unpublished):
    spec, home, _ = unpublished
    (home / "vit.pth").write_bytes(b"x" * 999)
    with pytest.raises(
        WeightsError, match="refusing cached weights .*999 bytes, not the 1000 of the published vit.pth"
    ):
        resolve_verified(spec)


def test_an_explicit_file_of_the_published_size_is_accepted_silently_and_another_warns(unpublished, tmp_path):
    spec, _, payload = unpublished
    good, other = tmp_path / "good.pth", tmp_path / "other.pth"
    good.write_bytes(payload)
    other.write_bytes(payload[:-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_verified(spec, good)[0] == good
    with pytest.warns(UserWarning, match="other.pth is not the published vit weights .*999 bytes"):
        resolve_verified(spec, other)
    pin_first_use(spec, good, "0" * 64)  # not the cache copy: nothing is pinned
    assert not pin_file(spec).exists()


def test_dinov2s_spec_has_no_placeholder_hash_and_its_published_size():
    from lightning_fid.extractors.weights import DINOV2_WEIGHTS

    assert DINOV2_WEIGHTS.sha256 is None and DINOV2_WEIGHTS.size == 1_217_586_395


# ======================================================================== 7. the weak cases
def _npz(tmp_path, **arrays):
    path = tmp_path / "s.npz"
    base = dict(mu=np.zeros(3), sigma=np.eye(3), n=np.asarray(10))
    np.savez(path, **{**base, **arrays})
    return path


MALFORMED = {
    "metadata not JSON": (dict(metadata=np.asarray("{not json")), "metadata is not valid JSON"),
    "metadata a list": (dict(metadata=np.asarray("[1, 2]")), "metadata must be a JSON object"),
    "class_n without the rest": (dict(class_n=np.array([3, 3])), "need class_n, class_mu and class_sigma together"),
    "class arrays that do not fit": (
        dict(class_n=np.array([3, 3]), class_mu=np.zeros((2, 3)), class_sigma=np.zeros((3, 3, 3))),
        r"class_n \(2,\), class_mu \(2, 3\) and class_sigma \(3, 3, 3\) do not fit",
    ),
    "a class count that is not a count": (
        dict(class_n=np.array([3.5, 3]), class_mu=np.zeros((2, 3)), class_sigma=np.zeros((2, 3, 3))),
        r"class_n\[0\]: n must be one non-negative integer",
    ),
    "n is NaN": (dict(n=np.asarray(np.nan)), "n must be one non-negative integer sample count"),
    "n is negative": (dict(n=np.asarray(-4)), "n must be one non-negative integer sample count"),
    "class_n strings": (
        dict(class_n=np.array(["a"]), class_mu=np.zeros((1, 3)), class_sigma=np.zeros((1, 3, 3))),
        "class_n must hold real numbers",
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_optional_arrays_are_a_clear_error_naming_the_file(tmp_path, name):
    arrays, match = MALFORMED[name]
    with pytest.raises(ValueError, match=f"s.npz.*{match}|{match}"):
        load_statistics(_npz(tmp_path, **arrays))


def test_features_that_are_not_2d_are_refused_by_name():
    with pytest.raises(ValueError, match=r"cache.npz: features must be 2-D"):
        Statistics.from_arrays({"features": np.zeros(5), "n": np.asarray(5)}, source="cache.npz")


def test_reading_an_image_folder_warns_nothing(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    cb = make_callback(tmp_path, real=str(folder), metrics=("fid",), input_range=(-1, 1), num_samples=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values, _ = cb.evaluate(TinyGAN())
    assert math.isfinite(values["fid"])


def test_kid_on_large_float32_features_is_exact_and_warns_nothing():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 16, generator=g) * 1e13, torch.randn(50, 16, generator=g) * 1e13
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = kid(x, y, 3, 20, 0)
    assert value == pytest.approx(kid(x.double(), y.double(), 3, 20, 0), rel=1e-9)


def test_fid_against_statistics_without_a_count_warns_nothing(tmp_path):
    from lightning_fid.engine import Scorer
    from lightning_fid.metrics import RunInfo

    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0)).double()
    stats = Statistics(x.mean(0), torch.cov(x.T), None)  # pytorch-fid files record no n
    scorer = Scorer([FID()], ["f"], RunInfo(num_samples=2))
    scorer.prepare({"f": stats})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scorer.score({"f": stats}, {"f": stats})["fid"] == 0.0


def test_string_conditions_with_a_per_class_metric_get_a_clear_message(tmp_path):
    prompts = [f"a photo of {i}" for i in range(23)]
    with pytest.raises(ValueError, match=r"per-class metrics need conditions= to be integer class labels.*prompts\?"):
        make_callback(
            tmp_path,
            metrics=("intra_fid",),
            conditions=prompts,
            real=RealData(TensorDataset(real_images(37), torch.arange(37) % 3), label_key=1),
        )


def test_intra_fid_alone_works_without_fid(tmp_path):
    def conditional(module, n, generator, conditions):
        return sample(module, n, generator) * (0.5 + 0.2 * conditions.view(-1, 1, 1, 1))

    cb = make_callback(
        tmp_path,
        metrics=(IntraFID(),),
        sample_fn=conditional,
        conditions=torch.arange(30) % 3,
        num_samples=30,
        real=RealData(TensorDataset(real_images(37), torch.arange(37) % 3), label_key=1),
    )
    assert math.isfinite(cb.evaluate(TinyGAN())[0]["intra_fid"])


def test_per_class_metrics_with_a_statistics_file_say_they_need_labelled_images(tmp_path):
    path = tmp_path / "ref.npz"
    Statistics(torch.zeros(8), torch.eye(8), 10).save(path)
    with pytest.raises(ValueError, match=r"holds one mean and covariance.*per-class metrics: labelled ones"):
        make_callback(tmp_path, metrics=("fid_per_class",), real=str(path), conditions=torch.arange(23) % 3)


@pytest.fixture
def folders(tmp_path):
    from helpers.weights import write_random_inception

    weights = write_random_inception(tmp_path / "inception.pth")
    out = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        g = np.random.default_rng(len(name))
        for i in range(10):
            Image.fromarray(g.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        out.append(str(folder))
    return str(weights), out


def _cli(args, capsys):
    from lightning_fid import cli

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_the_cli_reports_a_lowered_kid_subset_and_refuses_one_image_per_is_split(folders, capsys):
    weights, (a, b) = folders
    code, out, err = _cli(
        ["score", a, b, "--metrics", "kid", "--kid-subsets", "3", "--json", "--inception-weights", weights], capsys
    )
    assert code == 0 and "--kid-subset-size 1000 is larger than the 10 samples of the smaller side; using 10" in err
    assert json.loads(out)["kid_subset_size"] == 10
    code, _, err = _cli(["score", a, b, "--metrics", "is", "--inception-weights", weights], capsys)
    assert code == 2 and "splits=10) needs at least 2 samples per split" in err and "--is-splits" in err
    code, out, _ = _cli(
        ["score", a, b, "--metrics", "is", "--is-splits", "2", "--json", "--inception-weights", weights], capsys
    )
    assert code == 0 and json.loads(out)["is"] > 1.0


def test_the_cli_uses_one_inception_weights_flag_for_stats_and_score(folders, capsys, tmp_path):
    weights, (a, _) = folders
    code, out, _ = _cli(["stats", a, "-o", str(tmp_path / "r.npz"), "--inception-weights", weights], capsys)
    assert code == 0 and load_statistics(tmp_path / "r.npz").metadata["extractor"] == "inception-v3-tf-2015-12-05"
    with pytest.raises(SystemExit) as exit_info:
        _cli(["stats", a, "-o", str(tmp_path / "r.npz"), "--weights", weights], capsys)
    assert exit_info.value.code == 2 and "unrecognized arguments: --weights" in capsys.readouterr().err


# ======================================================================== 8. README promises
class Endless(IterableDataset):
    def __iter__(self):
        while True:
            yield (real_images(1, seed=0)[0],)


def test_fid_every_n_steps_with_fresh_early_stopping_stops_on_endless_data_without_validation(tmp_path):
    class NoValidation(TinyGAN):
        validation_step = None

    for listed_first, stops_at in ((False, 9), (True, 10)):
        stopper = FreshEarlyStopping(monitor="fid", mode="min", patience=2)
        cb = make_callback(tmp_path, metrics=("fid",), every_n_steps=3)
        callbacks = [stopper, cb] if listed_first else [cb, stopper]
        kw = trainer_kwargs(tmp_path, max_steps=60, max_epochs=None, limit_train_batches=None, limit_val_batches=0)
        trainer = pl.Trainer(callbacks=callbacks, **kw)
        trainer.fit(NoValidation(lr=0.0, bn_momentum=0.0), DataLoader(Endless(), batch_size=4))
        assert [e["step"] for e in cb.history] == [3, 6, 9]  # FID constant: best, then patience=2 evaluations
        # listed after GenerativeMetrics it stops at the evaluation's step; listed before, it sees the same
        # evaluation at the next step's end (README says so)
        assert stopper.wait_count == 2 and trainer.global_step == stops_at


def test_fresh_early_stopping_checks_every_evaluation_once_with_validation_every_25_steps(tmp_path):
    checks = []

    class Counting(FreshEarlyStopping):
        def _run_early_stopping_check(self, trainer):
            checks.append(trainer.global_step)
            super()._run_early_stopping_check(trainer)

    stopper = Counting(monitor="fid", mode="min", patience=100)
    cb = make_callback(tmp_path, metrics=("fid",), every_n_steps=4)
    kw = trainer_kwargs(
        tmp_path,
        max_steps=30,
        max_epochs=None,
        limit_train_batches=None,
        val_check_interval=25,
        check_val_every_n_epoch=None,
    )
    pl.Trainer(callbacks=[cb, stopper], **kw).fit(TinyGAN(), DataLoader(Endless(), batch_size=4), loaders()[1])
    assert [e["step"] for e in cb.history] == [4, 8, 12, 16, 20, 24, 28]
    assert checks == [4, 8, 12, 16, 20, 24, 28]  # each evaluation once: none skipped, none twice at validation


IDENTICAL = {
    "N < d": (50, 64),
    "N = d": (64, 64),
    "N >> d": (500, 16),
    "2048-d, 300 samples": (300, 2048),
}


@pytest.mark.parametrize("name", sorted(IDENTICAL))
def test_fid_of_identical_statistics_is_exactly_zero(name):
    n, d = IDENTICAL[name]
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(d)).double() * 3 + 1
    mu, sigma = x.mean(0), torch.cov(x.T)
    assert frechet_distance(mu, sigma, mu, sigma) == 0.0


def test_fid_of_a_generator_that_returns_the_real_images_is_zero_in_the_callback_and_the_cli(tmp_path, capsys):
    images = real_images(20)
    cb = make_callback(
        tmp_path,
        metrics=("fid",),
        num_samples=20,
        batch_size=20,
        real=TensorDataset(images),
        sample_fn=lambda m, n, g: images[:n] + 0 * torch.rand(n, 1, 1, 1, generator=g),
        feature_extractor=TinyFeatures(dim=32),
        log_images=0,
    )
    assert cb.evaluate(TinyGAN())[0]["fid"] == 0.0  # 20 samples in 32 dimensions: a singular covariance
    x = torch.randn(300, 2048, generator=torch.Generator().manual_seed(0)).double()  # N < d, as the issue's case
    path = tmp_path / "ref.npz"
    Statistics(x.mean(0), torch.cov(x.T), 300, metadata={"extractor": "inception-v3-tf-2015-12-05"}).save(path)
    code, out, _ = _cli(["score", str(path), str(path), "--json"], capsys)
    assert code == 0 and json.loads(out)["fid"] == 0.0


def test_step_schedules_never_overwrite_a_sample_grid(tmp_path):
    cb = make_callback(tmp_path, metrics=("fid",), every_n_steps=1)
    pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=2)).fit(TinyGAN(), *loaders())
    pngs = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert len(cb.history) == 4 and pngs == [
        "samples_epoch=0000-step=00000001.png",
        "samples_epoch=0000-step=00000002.png",
        "samples_epoch=0001-step=00000003.png",
        "samples_epoch=0001-step=00000004.png",
    ]


def test_is_next_to_a_custom_extractor_says_why_it_needs_inception_offline(tmp_path, monkeypatch):
    from helpers.http import CLOSED_PORT_PROXY

    monkeypatch.setenv("LIGHTNING_FID_HOME", str(tmp_path / "empty"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, CLOSED_PORT_PROXY)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    cb = make_callback(tmp_path, metrics=("fid", "is"))  # feature_extractor: the tiny encoder
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=1))
    with pytest.raises(
        Exception,
        match=r"(?s)InceptionScore\(splits=10, split_size=None\) reads Inception-v3's logits, which "
        r"feature_extractor= does not provide .*InceptionV3\(weights_path=\.\.\., "
        r"logits=True\).*--inception-weights FILE in the CLI",
    ):
        trainer.fit(TinyGAN(), *loaders())
    assert trainer.global_step == 0


@pytest.mark.slow
def test_an_inception_with_logits_as_feature_extractor_serves_fid_and_is_in_one_pass(tmp_path):
    from helpers.weights import write_random_inception

    from lightning_fid import InceptionV3

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inception = InceptionV3(write_random_inception(tmp_path / "inception.pth"), logits=True)
    cb = make_callback(
        tmp_path,
        metrics=("fid", InceptionScore(splits=2)),
        feature_extractor=inception,
        num_samples=10,
        batch_size=5,
        log_images=0,
    )
    calls = []
    inception.net.register_forward_hook(lambda *a: calls.append(1))
    values, _ = cb.evaluate(TinyGAN())
    slots = cb.evaluator.slots
    assert [(s.name, s.output, s.info.feature_dim) for s in slots] == [
        ("inception-v3-tf-2015-12-05", 0, 2048),
        ("inception-v3-tf-2015-12-05-logits", 1, 1008),
    ]
    assert slots[0].module is slots[1].module and values["is"] > 1.0 and math.isfinite(values["fid"])
    assert len(calls) == 1 + 8 + 2  # the dry run, 37 real images in 8 batches, 10 samples in 2: none twice
