"""Trust by construction: each class of failure closed by one mechanism, tried on many instances.

1. reference identity is exact (data, labels, reading, network configuration, statistics files);
2. once training runs, a metric never ends the run, and what is knowable fails before training;
3. keys, files and state belong to exactly one callback and metric;
4. frozen means frozen, however an extractor is reached;
5. ranks agree before anything can fail alone;
6. weights without a published hash are verified and pinned;
7. the weak cases: clear messages and no needless warnings;
8. what README promises holds.

Every case asserts its exact outcome.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers.tiny import TinyEmbed, TinyFeatures, TinyGAN, loaders, make_callback, real_images, sample, trainer_kwargs
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from lightning_fid import FreshEarlyStopping, RealData, resolve_reference
from lightning_fid.engine import Statistics, StatsCache, build_slots
from lightning_fid.engine._real import RealOptions
from lightning_fid.engine._reference import forget_resolved
from lightning_fid.metrics import (
    FID,
    KID,
    DensityCoverage,
    FIDInfinity,
    InceptionScore,
    Metric,
    Needs,
    PrecisionRecall,
    frechet_distance,
    resolve_metrics,
)

OPTIONS = RealOptions(input_range=(-1, 1), batch_size=5)


class Items(Dataset):
    """A map-style dataset of (image, label) whose items can be changed in place; counts its reads."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self.images, self.labels, self.reads = images.clone(), labels, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        self.reads += 1
        return (self.images[i],) if self.labels is None else (self.images[i], self.labels[i])


def _resolve(tmp_path, data, extractor=None, metrics=("fid",), options=OPTIONS, cache=True):
    forget_resolved()
    classes = 3 if "fid_per_class" in metrics else 0
    slots, _ = build_slots(resolve_metrics(metrics), extractor or TinyFeatures(), classes=classes)
    return resolve_reference(data, slots, options, cache=StatsCache(tmp_path / "cache") if cache else None)


def _direct_fid(a: Statistics, b: Statistics) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


# ======================================================================== 1. reference identity
def _changed_item(data: Items, i: int) -> Items:
    other = Items(data.images, data.labels)
    other.images[i] = -other.images[i]
    return other


IDENTITY_CHANGES = {
    "an image the old fingerprint never sampled": lambda d: _changed_item(d, 4),
    "the last image": lambda d: _changed_item(d, 36),
    "one label": lambda d: Items(d.images, torch.where(torch.arange(37) == 7, 2, d.labels)),
    "the image order": lambda d: Items(d.images.flip(0), d.labels.flip(0)),
}


@pytest.mark.parametrize("name", sorted(IDENTITY_CHANGES))
def test_any_change_to_what_is_read_is_a_cache_miss_with_the_new_statistics(tmp_path, name):
    data = Items(real_images(37), torch.arange(37) % 3)
    options = RealOptions(input_range=(-1, 1), batch_size=5, label_key=1)
    first = _resolve(tmp_path, data, metrics=("fid", "fid_per_class"), options=options)
    changed = IDENTITY_CHANGES[name](data)
    cached = _resolve(tmp_path, changed, metrics=("fid", "fid_per_class"), options=options)
    fresh = _resolve(tmp_path, changed, metrics=("fid", "fid_per_class"), options=options, cache=False)
    assert cached.key != first.key
    got, want = cached.stats["tiny-features"], fresh.stats["tiny-features"]
    torch.testing.assert_close(got.sigma, want.sigma, rtol=0, atol=0)
    for c in want.classes:
        torch.testing.assert_close(got.classes[c].mu, want.classes[c].mu, rtol=0, atol=0)


def test_the_same_content_in_another_object_is_a_hit(tmp_path):
    first = _resolve(tmp_path, Items(real_images(37)))
    again_data = Items(real_images(37))
    extractor = TinyFeatures()
    again = _resolve(tmp_path, again_data, extractor=extractor)
    assert again.key == first.key and extractor.calls == 0 and again_data.reads == 37  # read, not extracted


def _flip(batch):
    return -batch[0]


def _same(batch):
    return batch[0]


READING_CHANGES = {
    "transform": dict(transform=_flip),
    "image_key": dict(image_key=0),
    "real input range": dict(input_range=(-1.2, 1.2)),
    "num_real": dict(num_real=30),
    "label_key": dict(label_key=1),
}


@pytest.mark.parametrize("name", sorted(READING_CHANGES))
def test_a_changed_reading_is_a_cache_miss(tmp_path, name):
    data = Items(real_images(37), torch.arange(37) % 3)
    base = _resolve(tmp_path, data, options=RealOptions(input_range=(-1, 1), batch_size=5, transform=_same))
    other = _resolve(
        tmp_path,
        data,
        options=RealOptions(**{"input_range": (-1, 1), "batch_size": 5, "transform": _same, **READING_CHANGES[name]}),
    )
    assert other.key != base.key


def test_reference_id_replaces_the_read_pass_and_is_trusted(tmp_path):
    options = RealOptions(input_range=(-1, 1), batch_size=5, reference_id="digits-v1")
    data = Items(real_images(37))
    first = _resolve(tmp_path, data, options=options)
    assert data.reads == 37  # the real pass only, no fingerprint pass
    changed = _changed_item(data, 3)
    again = _resolve(tmp_path, changed, options=options)
    assert again.key == first.key and changed.reads == 0  # the user's name is the identity: served, not read
    assert _resolve(tmp_path, data).key != first.key  # without it, the data itself


def test_use_cache_false_reads_the_data_once_and_fingerprints_nothing(tmp_path):
    data = Items(real_images(37))
    _resolve(tmp_path, data, cache=False)
    assert data.reads == 37


def _folder(path: Path, n=6) -> Path:
    path.mkdir()
    g = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(g.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path / f"{i:03d}.png")
    return path


def test_a_folder_is_identified_by_its_files_bytes_not_their_dates(tmp_path):
    folder = _folder(tmp_path / "imgs")
    opts = RealOptions(input_range="uint8", batch_size=4)
    first = _resolve(tmp_path, str(folder), options=opts)
    target = folder / "002.png"
    stat = target.stat()
    pixels = np.asarray(Image.open(target)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same date; the size may match too
    assert _resolve(tmp_path, str(folder), options=opts).key != first.key
    (folder / "002.png").rename(folder / "009.png")
    assert len({first.key, _resolve(tmp_path, str(folder), options=opts).key}) == 2


class Pool(nn.Module):
    """A parameter-free extractor whose constructor argument lives in a plain attribute."""

    name, feature_dim, input_range = "pool", 12, (0.0, 1.0)

    def __init__(self, mode="avg", options=None, table=None):
        super().__init__()
        self.mode, self.options, self.table = mode, options or {"size": 2}, table

    def forward(self, x):
        pooled = (
            nn.functional.adaptive_max_pool2d(x, 2) if self.mode == "max" else nn.functional.adaptive_avg_pool2d(x, 2)
        )
        return pooled.flatten(1) * (1.0 if self.table is None else float(self.table.sum()))


EXTRACTOR_CHANGES = {
    "a constructor argument": (Pool("avg"), Pool("max")),
    "an option in a dict": (Pool(options={"size": 2}), Pool(options={"size": 3})),
    "a plain tensor attribute": (Pool(table=torch.ones(2)), Pool(table=torch.full((2,), 2.0))),
}


@pytest.mark.parametrize("name", sorted(EXTRACTOR_CHANGES))
def test_an_extractors_configuration_is_part_of_its_identity(tmp_path, name):
    a, b = EXTRACTOR_CHANGES[name]
    data = TensorDataset(real_images(37))
    first, second = _resolve(tmp_path, data, extractor=a), _resolve(tmp_path, data, extractor=b)
    assert first.key != second.key
    fresh = _resolve(tmp_path, data, extractor=b, cache=False)
    torch.testing.assert_close(second.stats["pool"].mu, fresh.stats["pool"].mu, rtol=0, atol=0)


def test_an_extractor_whose_configuration_cannot_be_identified_is_not_cached(tmp_path):
    extractor = Pool()
    extractor.postprocess = lambda x: x  # no stable identity
    with pytest.warns(UserWarning, match=r"not cached: extractor pool's attribute postprocess has no stable identity"):
        reference = _resolve(tmp_path, TensorDataset(real_images(37)), extractor=extractor)
    assert reference.key.startswith("uncached") and not list((tmp_path / "cache").glob("*.npz"))


def _npz(tmp_path, name="ref.npz", dim=8, **metadata) -> str:
    x = torch.randn(40, dim, generator=torch.Generator().manual_seed(1)).double()
    stats = Statistics(x.mean(0), torch.cov(x.T), 40, metadata=metadata)
    stats.save(tmp_path / name)
    return str(tmp_path / name)


STATS_FILES = {
    "another network's name": (
        dict(extractor="inception-v3-tf-2015-12-05"),
        8,
        r"holds statistics of inception-v3-tf-2015-12-05 features, but this run computes tiny-features's",
    ),
    "another preprocessing": (dict(extractor="tiny-features-pytorch-fid"), 8, "tiny-features-pytorch-fid features"),
    "other weights": (dict(extractor="tiny-features", weights_sha256="0" * 64), 8, "other tiny-features weights"),
    "another dimension": ({}, 128, "holds 128-d statistics but tiny-features gives 8-d"),
}


@pytest.mark.parametrize("name", sorted(STATS_FILES))
def test_a_statistics_file_of_another_network_is_refused_before_training(tmp_path, name):
    metadata, dim, match = STATS_FILES[name]
    path = _npz(tmp_path, dim=dim, **metadata)
    with pytest.raises(ValueError, match=match):
        _fit(tmp_path, real=path, metrics=("fid",))
    assert not _fit.trained


def test_a_statistics_file_of_this_network_is_used_and_one_without_records_warns(tmp_path):
    from helpers.tiny import TinyFeatures as F

    info_name, fingerprint = "tiny-features", _fingerprint(F())
    ours = _npz(tmp_path, "ours.npz", extractor=info_name, weights_sha256=fingerprint)
    assert math.isfinite(_fit(tmp_path, real=ours, metrics=("fid",)).history[0]["fid"])
    theirs = _npz(tmp_path, "theirs.npz")
    with pytest.warns(UserWarning, match="does not record which network computed it: make sure it holds tiny-features"):
        _fit(tmp_path, real=theirs, metrics=("fid",))


def _fingerprint(module) -> str:
    from lightning_fid.extractors.base import describe

    return describe(module).fingerprint


CLI_FILES = {
    "two networks": (
        ["--metrics", "fid"],
        dict(extractor="inception-v3-tf-2015-12-05"),
        dict(extractor="clip-vit-l-14-336px"),
        2048,
        "holds statistics of clip-vit-l-14-336px features",
    ),
    "fd_dinov2 on Inception files": (
        ["--metrics", "fd_dinov2"],
        dict(extractor="inception-v3-tf-2015-12-05"),
        dict(extractor="inception-v3-tf-2015-12-05"),
        1024,
        "holds statistics of inception-v3-tf-2015-12-05 features, but this run computes dinov2",
    ),
    "fd_dinov2 on a 128-d file": (
        ["--metrics", "fd_dinov2"],
        {},
        {},
        128,
        "holds 128-d statistics but dinov2-vit-l-14 gives 1024-d",
    ),
    "different weights": (
        ["--metrics", "fid"],
        dict(extractor="inception-v3-tf-2015-12-05", weights_sha256="a" * 64),
        dict(extractor="inception-v3-tf-2015-12-05", weights_sha256="b" * 64),
        2048,
        "computed with different networks \\(weights_sha256",
    ),
}


@pytest.mark.parametrize("name", sorted(CLI_FILES))
def test_the_cli_never_labels_foreign_statistics(tmp_path, capsys, name):
    from lightning_fid import cli

    flags, meta_a, meta_b, dim, match = CLI_FILES[name]
    a, b = _npz(tmp_path, "a.npz", dim=dim, **meta_a), _npz(tmp_path, "b.npz", dim=dim, **meta_b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(["score", a, b, *flags])
    err = capsys.readouterr().err
    assert code == 2 and __import__("re").search(match, err), err


# ======================================================================== 2. a run never dies for a metric
def _fit(tmp_path, model=None, epochs=2, extra=(), trainer_kw=None, **kw):
    """Fit with make_callback(**kw); ``_fit.trained`` says whether a training step ran."""
    steps = []
    _fit.trained = False

    class Spy(pl.Callback):
        def on_train_batch_start(self, *a):
            steps.append(1)

    cb = make_callback(tmp_path, **kw)
    kwargs = trainer_kwargs(tmp_path, max_epochs=epochs, **(trainer_kw or {}))
    trainer = pl.Trainer(callbacks=[cb, Spy(), *extra], **kwargs)
    try:
        trainer.fit(model or TinyGAN(), *loaders())
    finally:
        _fit.trained = bool(steps)
    return cb


class Normalise(TinyFeatures):
    """L2-normalised features: a constant image gives 0 / 0 = NaN."""

    name = "normalise"

    def forward(self, x):
        centred = x - x.mean(dim=(1, 2, 3), keepdim=True)
        e = super().forward(centred) * 0 + centred.flatten(1)[:, :8]
        return e / e.norm(dim=1, keepdim=True)


class Collapses(TinyGAN):
    """Generates a constant image from epoch ``at`` on (a collapsed generator)."""

    def __init__(self, at: int = 1):
        super().__init__()
        self.at = at

    def sample_images(self, batch_size, generator):
        images = super().sample_images(batch_size, generator)
        return images * 0 + 0.25 if self.current_epoch >= self.at else images


def test_nan_features_during_training_are_nan_with_a_warning_naming_extractor_and_side(tmp_path):
    with pytest.warns(UserWarning, match="normalise returned NaN/inf features for the generated samples"):
        cb = _fit(tmp_path, model=Collapses(at=1), epochs=3, metrics=("fid",), feature_extractor=Normalise())
    assert [e["epoch"] for e in cb.history] == [0, 1, 2]
    assert math.isfinite(cb.history[0]["fid"]) and math.isnan(cb.history[1]["fid"]) and math.isnan(cb.history[2]["fid"])


def test_nan_features_in_the_dry_run_or_the_real_data_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="dry run: normalise returned NaN/inf features for the generated samples"):
        _fit(tmp_path, model=Collapses(at=0), metrics=("fid",), feature_extractor=Normalise())
    assert not _fit.trained
    flat = TensorDataset(torch.full((37, 3, 8, 8), 0.3))
    with pytest.raises(ValueError, match="normalise returned NaN/inf features for the real data"):
        _fit(tmp_path, real=flat, metrics=("fid",), feature_extractor=Normalise(), use_cache=False)
    assert not _fit.trained


class FailsLater(TinyGAN):
    def sample_images(self, batch_size, generator):
        if self.current_epoch >= 1:
            raise RuntimeError("the sampler broke at epoch 1")
        return super().sample_images(batch_size, generator)


def test_a_sampler_that_breaks_during_training_logs_nan_and_training_goes_on(tmp_path):
    with pytest.warns(UserWarning, match="sampling or feature extraction failed .*the sampler broke at epoch 1"):
        cb = _fit(tmp_path, model=FailsLater(), epochs=3, metrics=("fid",))
    assert [math.isnan(e["fid"]) for e in cb.history] == [False, True, True]


class Explodes(Metric):
    name = "explodes"
    needs = Needs(moments=True)

    def compute(self, real, fake, context):
        if context.state.setdefault("calls", 0) >= 1:
            raise FloatingPointError("diverged")
        context.state["calls"] += 1
        return {self.key: 1.0}


def test_a_metric_that_raises_during_training_is_nan_and_the_others_still_log(tmp_path):
    with pytest.warns(UserWarning, match=r"Explodes\(\) could not be computed .*FloatingPointError: diverged"):
        cb = _fit(tmp_path, epochs=3, metrics=("fid", Explodes()))
    assert [e["explodes"] for e in cb.history][0] == 1.0 and all(math.isnan(e["explodes"]) for e in cb.history[1:])
    assert all(math.isfinite(e["fid"]) for e in cb.history)


def test_an_unwritable_history_file_warns_and_keeps_the_history(tmp_path, monkeypatch):
    from lightning_fid.callbacks import _history

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_history, "atomic_write", disk_full)
    with pytest.warns(UserWarning, match="cannot write the evaluation history .*No space left on device"):
        cb = _fit(tmp_path, metrics=("fid",))
    assert len(cb.history) == 2


KNOWABLE = {
    "memory for kept features": (
        dict(metrics=(KID(subset_size=10),), num_samples=4 * 10**9, batch_size=5),
        r"need \d+\.\d GiB .* lower num_samples",
    ),
    "precision k >= num_samples": (
        dict(metrics=(PrecisionRecall(k=23),)),
        r"PrecisionRecall\(k=23\) needs more than k generated",
    ),
    "density k >= real samples": (
        dict(metrics=(DensityCoverage(k=40),)),
        r"DensityCoverage\(k=40\) needs more than k real samples, but there are 37",
    ),
    "FID-infinity on 2 samples": (
        dict(metrics=(FIDInfinity(),), num_samples=2, batch_size=2, log_images=0),
        "FIDInfinity needs subsets of at least two sizes",
    ),
    "IS splits of one sample": (
        dict(metrics=(InceptionScore(splits=12, extractor=TinyFeatures()),)),
        r"splits=12\) needs at least 2 samples per split",
    ),
    "KID subset over real count": (
        dict(metrics=(KID(subset_size=20),), real=RealData(TensorDataset(real_images(37)), num_real=15)),
        "larger than the 15 real samples",
    ),
    "sampler breaks on the last partial batch": (
        dict(metrics=("fid",), sample_fn=lambda m, n, g: None if n == 3 else sample(m, n, g)),
        "dry run: sample_fn must return a tensor",
    ),
    "sampler breaks on the final evaluation's partial batch": (
        dict(metrics=("fid",), final_num_samples=26, sample_fn=lambda m, n, g: None if n == 1 else sample(m, n, g)),
        "dry run: sample_fn must return a tensor",
    ),
    "sampler ignores its generator": (
        dict(metrics=("fid",), sample_fn=lambda m, n, g: torch.rand(n, 3, 8, 8) * 2 - 1),
        "does not draw its noise from the `generator`",
    ),
}


@pytest.mark.parametrize("name", sorted(KNOWABLE))
def test_what_is_knowable_fails_before_training_naming_the_option(tmp_path, name):
    kwargs, match = KNOWABLE[name]
    with pytest.raises(ValueError, match=match):
        _fit(tmp_path, **kwargs)
    assert not _fit.trained


def test_kept_feature_memory_is_counted_and_moments_are_not(tmp_path):
    from lightning_fid.engine._memory import needed_bytes

    fid_slots, _ = build_slots(resolve_metrics(("fid",)), TinyFeatures())
    kid_slots, _ = build_slots(resolve_metrics((KID(),)), TinyFeatures())
    assert needed_bytes(fid_slots, 10**9, 10**6) == 2 * (64 + 8) * 8  # two 8 x 8 float64 moments
    assert needed_bytes(kid_slots, 10**9, 10**6) == (10**9 + 10**6) * 8 * 4


def test_evaluate_with_more_samples_than_conditions_is_refused(tmp_path):
    def conditional(module, n, generator, conditions):
        return sample(module, n, generator)

    cb = make_callback(tmp_path, metrics=("fid",), sample_fn=conditional, conditions=list(range(23)))
    with pytest.raises(ValueError, match=r"evaluate\(num_samples=30\) but conditions has 23 entries"):
        cb.evaluate(TinyGAN(), 30)


# ======================================================================== 3. keys, files and state
def test_per_class_keys_are_checked_like_any_key_before_training(tmp_path):
    from test_per_class import REAL_LABELS, conditional

    for monitor in (EarlyStopping(monitor="fid/class_0", patience=2), ModelCheckpoint(monitor="fid/class_1")):
        with pytest.raises(ValueError, match=r"monitor='fid/class_\d'\) would also check between evaluations"):
            _fit(
                tmp_path,
                extra=(monitor,),
                every_n_epochs=2,
                metrics=("fid_per_class",),
                sample_fn=conditional,
                conditions=torch.arange(23) % 3,
                trainer_kw={"enable_checkpointing": True},
                real=RealData(TensorDataset(real_images(37), REAL_LABELS), label_key=1),
            )
        assert not _fit.trained


SIBLINGS = {
    "one prefix": (dict(), dict(metrics=("fid", KID(subsets=4, subset_size=10))), "state_key. must be unique"),
    "prefixes that share a file name": (
        dict(prefix="ema/"),
        dict(prefix="ema_"),
        r"history file lightning_fid_history_ema.json",
    ),
    "a final key meets a metric key": (
        dict(final_num_samples=30),
        dict(prefix="final_"),
        r"both write keys \['final_fid'",
    ),
}


@pytest.mark.parametrize("name", sorted(SIBLINGS))
def test_two_callbacks_never_share_a_key_or_a_file(tmp_path, name):
    a, b, match = SIBLINGS[name]
    first = make_callback(tmp_path, **{"metrics": ("fid",), **a})
    second = make_callback(tmp_path, **{"metrics": ("fid",), **b})
    trainers = []
    with pytest.raises((ValueError, RuntimeError), match=match):  # one prefix, one state key: Lightning refuses it
        trainers.append(pl.Trainer(callbacks=[first, second], **trainer_kwargs(tmp_path, max_epochs=1)))
        trainers[0].fit(TinyGAN(), *loaders())
    assert not trainers or trainers[0].global_step == 0


def test_two_callbacks_with_their_own_prefixes_keep_their_own_keys_files_and_state(tmp_path):
    raw = make_callback(tmp_path, metrics=("fid",), prefix="raw/")
    other = make_callback(tmp_path, metrics=(KID(subsets=4, subset_size=10),), prefix="b/")
    trainer = pl.Trainer(callbacks=[raw, other], **trainer_kwargs(tmp_path, max_epochs=2))
    trainer.fit(TinyGAN(), *loaders())
    assert {"raw/fid", "raw/eval_seconds", "b/kid", "b/eval_seconds"} <= set(trainer.callback_metrics)
    first, paired = {"fid", "fid_se", "eval_seconds"}, {"fid_vs_best", "fid_vs_best_se"}  # error bars: on by default
    assert [set(e) - {"epoch", "step"} for e in raw.history] == [first, first | paired]
    assert raw.state_key != other.state_key
    assert {p.name for p in tmp_path.glob("lightning_fid_history*.json")} == {
        "lightning_fid_history_raw.json",
        "lightning_fid_history_b.json",
    }


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(metrics=("kid", FID(key="kid"))), "both log 'kid'"),
        (dict(metrics=("fid", FID(key="fid_raw", extractor=TinyEmbed())), weights="both"), "'fid_raw' twice"),
        (dict(metrics=("fid", FID(key="final_fid", extractor=TinyEmbed())), final_num_samples=30), "'final_fid' twice"),
    ],
)
def test_one_callbacks_keys_are_unique_including_raw_and_final(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_callback(tmp_path, **kwargs)


# ======================================================================== 4. frozen means frozen
class WithBatchNorm(TinyFeatures):
    name = "with-bn"

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.bn(super().forward(x)))


class HoldsItsExtractor(TinyGAN):
    def __init__(self, extractor):
        super().__init__()
        self.encoder = extractor  # reachable from the module: Lightning calls .train() on it every epoch


def test_an_extractor_reachable_from_the_module_runs_in_eval_mode_and_keeps_its_modes(tmp_path):
    extractor = WithBatchNorm()
    stats_before = extractor.bn.running_mean.clone()
    cb = _fit(tmp_path, model=HoldsItsExtractor(extractor), metrics=("fid",), feature_extractor=extractor)
    torch.testing.assert_close(extractor.bn.running_mean, stats_before, rtol=0, atol=0)  # never updated
    extractor.train()  # as Lightning leaves it: each forward pass runs in eval mode and restores this
    first, _ = cb.evaluate(HoldsItsExtractor(extractor))
    second, _ = cb.evaluate(HoldsItsExtractor(extractor))
    assert extractor.training and first == second and math.isfinite(first["fid"])
    torch.testing.assert_close(extractor.bn.running_mean, stats_before, rtol=0, atol=0)


def test_a_users_trainable_extractor_keeps_its_requires_grad_and_dropout_never_applies():
    from lightning_fid.extractors.base import Frozen

    extractor = WithBatchNorm().train()
    frozen = Frozen(extractor).train()
    images = torch.rand(6, 3, 8, 8)
    assert torch.equal(frozen(images), frozen(images))  # no dropout: eval mode inside
    assert all(p.requires_grad for p in extractor.bn.parameters()) and extractor.training and not frozen.training


# ======================================================================== 5. ranks agree
def _fingerprint_worker(rank, world, tmp):
    from lightning_fid.engine._identity import data_fingerprint
    from lightning_fid.engine._real import RealSource

    class BrokenOnRank1(Items):
        def __getitem__(self, i):
            if rank == 1:
                raise OSError(f"rank {rank} cannot read item {i}")
            return super().__getitem__(i)

    try:
        data_fingerprint(RealSource(BrokenOnRank1(real_images(37))), 37, OPTIONS, torch.device("cpu"))
    except Exception as exc:  # noqa: BLE001 - what each rank raised is the result
        return f"{type(exc).__name__}: {exc}"
    return "no error"


@pytest.mark.multiprocess
def test_a_rank_that_cannot_read_the_data_stops_every_rank(tmp_path):
    from helpers.dist import run_distributed

    results = run_distributed(_fingerprint_worker, 2, tmp_path, str(tmp_path))
    assert results[0].startswith("RuntimeError: reading the real data failed on another rank")
    assert results[1].startswith("OSError: rank 1 cannot read item")


def _identical_fingerprint_worker(rank, world, tmp):
    from lightning_fid.engine._identity import data_fingerprint
    from lightning_fid.engine._real import RealSource

    return data_fingerprint(
        RealSource(Items(real_images(37), torch.arange(37) % 3)),
        37,
        RealOptions(input_range=(-1, 1), batch_size=5, label_key=1),
        torch.device("cpu"),
    )


@pytest.mark.multiprocess
def test_the_fingerprint_is_the_same_for_any_number_of_ranks(tmp_path):
    from helpers.dist import run_distributed

    one = _identical_fingerprint_worker(0, 1, str(tmp_path))
    assert run_distributed(_identical_fingerprint_worker, 2, tmp_path, str(tmp_path)) == [one, one]
    assert run_distributed(_identical_fingerprint_worker, 3, tmp_path, str(tmp_path)) == [one, one, one]


# ======================================================================== found by an adversarial user
class Scaled(TinyFeatures):
    """Features times a scale kept in a non-persistent buffer (not in the state dict)."""

    name = "scaled"

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale), persistent=False)

    def forward(self, x):
        return super().forward(x) * self.scale


class Mode(TinyFeatures):
    name = "mode"
    POOL = "avg"  # a class-level option

    def forward(self, x):
        pooled = (
            nn.functional.adaptive_max_pool2d(x, 4) if self.POOL == "max" else nn.functional.adaptive_avg_pool2d(x, 4)
        )
        return torch.tanh(pooled.flatten(1) @ self.proj)


class ModeMax(Mode):
    POOL = "max"


def _tripled(module):
    with torch.no_grad():
        module.proj.mul_(3.0)
    return module


HIDDEN_CHANGES = {
    "a non-persistent buffer": (lambda: Scaled(1.0), lambda: Scaled(3.0)),
    "a class-level option": (Mode, ModeMax),
    "weights changed after loading": (TinyFeatures, lambda: _tripled(TinyFeatures())),
}


@pytest.mark.parametrize("name", sorted(HIDDEN_CHANGES))
def test_what_an_extractor_computes_with_is_all_in_its_identity(tmp_path, name):
    make_a, make_b = HIDDEN_CHANGES[name]
    data = TensorDataset(real_images(37))
    first, second = _resolve(tmp_path, data, extractor=make_a()), _resolve(tmp_path, data, extractor=make_b())
    assert first.key != second.key


def test_hooks_are_part_of_the_identity_and_one_that_cannot_be_identified_is_not_cached(tmp_path):
    data = TensorDataset(real_images(37))
    keys = []
    for factor in (5.0, 6.0):
        extractor = TinyFeatures()
        extractor.register_forward_hook(lambda module, args, out, factor=factor: out * factor)
        keys.append(_resolve(tmp_path, data, extractor=extractor).key)
    assert keys[0] != keys[1] and not keys[0].startswith("uncached")
    opaque = object()  # no stable repr: what it does cannot be told
    extractor = TinyFeatures()
    extractor.register_forward_hook(lambda module, args, out: out if opaque else out)
    with pytest.warns(UserWarning, match=r"not cached: extractor tiny-features's hook forward_hooks"):
        assert _resolve(tmp_path, data, extractor=extractor).key.startswith("uncached")


def test_an_edited_forward_is_another_network(tmp_path):
    namespace = {"__name__": "edited_module"}
    source = """
import torch
from helpers.tiny import TinyFeatures

class Edited(TinyFeatures):
    name = "edited"

    def forward(self, x):
        return torch.tanh(torch.nn.functional.{pool}(x, 4).flatten(1) @ self.proj)
"""
    keys = []
    for pool in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
        exec(source.format(pool=pool), namespace)  # the same class name, edited between two runs
        keys.append(_resolve(tmp_path, TensorDataset(real_images(37)), extractor=namespace["Edited"]()).key)
    assert keys[0] != keys[1]


def test_an_extractor_changed_between_two_fits_of_one_callback_is_described_again(tmp_path):
    extractor = TinyFeatures()
    cb = make_callback(tmp_path, metrics=("fid",), feature_extractor=extractor)
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(TinyGAN(), *loaders())
    first_key = cb.evaluator.reference.key
    _tripled(extractor)
    model = TinyGAN()
    pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=1)).fit(model, *loaders())
    assert cb.evaluator.reference.key != first_key
    fresh = make_callback(tmp_path, metrics=("fid",), feature_extractor=extractor, use_cache=False)
    assert cb.history[-1]["fid"] == pytest.approx(fresh.evaluate(model)[0]["fid"], rel=1e-9)


def test_a_statistics_file_of_another_configuration_is_refused(tmp_path):
    from lightning_fid.engine._stats import identity_metadata
    from lightning_fid.extractors.base import describe

    path = _npz(tmp_path, **identity_metadata(describe(Mode())))
    with pytest.raises(ValueError, match="computed with mode in another configuration"):
        _fit(tmp_path, real=path, metrics=("fid",), feature_extractor=ModeMax())


def test_fresh_early_stopping_never_stops_a_run_because_an_evaluation_failed(tmp_path):
    stopper = FreshEarlyStopping(monitor="fid", mode="min", patience=10)
    with pytest.warns(UserWarning, match="fid is not finite at step .* does not count towards patience"):
        cb = _fit(tmp_path, model=FailsLater(), epochs=4, metrics=("fid",), extra=(stopper,))
    assert len(cb.history) == 4 and not stopper.stopped_epoch and stopper.wait_count == 0


def test_adding_a_metric_on_resume_keeps_the_history_and_warns(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    _fit(tmp_path / "a", metrics=("fid",), extra=(ckpt,), trainer_kw={"enable_checkpointing": True})
    resumed = make_callback(tmp_path, metrics=("fid", KID(subsets=4, subset_size=10)))
    trainer = pl.Trainer(callbacks=[resumed], **trainer_kwargs(tmp_path / "b", max_epochs=3))
    with pytest.warns(UserWarning, match=r"the checkpoint evaluated no other metric; the constructor's \['KID"):
        trainer.fit(TinyGAN(), *loaders(), ckpt_path=str(tmp_path / "ckpt" / "epoch=1.ckpt"))
    assert [e["epoch"] for e in resumed.history] == [0, 1, 2] and "kid" in resumed.history[-1]


def test_resuming_against_another_reference_warns_and_restarts_best(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    _fit(tmp_path / "a", metrics=("fid",), extra=(ckpt,), trainer_kw={"enable_checkpointing": True})
    resumed = make_callback(tmp_path, metrics=("fid",), feature_extractor=TinyFeatures(seed=7))
    trainer = pl.Trainer(callbacks=[resumed], **trainer_kwargs(tmp_path / "b", max_epochs=3))
    with pytest.warns(UserWarning, match="scored against another reference .* the best value starts afresh"):
        trainer.fit(TinyGAN(), *loaders(), ckpt_path=str(tmp_path / "ckpt" / "epoch=1.ckpt"))
    assert resumed.best == resumed.history[-1]["fid"]


class NoOption(Metric):
    name = "no_option"

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self._alpha = alpha  # not under its own name

    def compute(self, real, fake, context):
        return {self.key: self._alpha}


class ReturnsAVector(Metric):
    name = "vector"

    def compute(self, real, fake, context):
        return {self.key: torch.ones(3)}


class ForgetsAKey(Metric):
    name = "forgets"

    def keys(self, run=None):
        return (self.key, self.key + "_extra")

    def compute(self, real, fake, context):
        return {self.key: 1.0}


def test_user_metrics_that_cannot_work_are_refused_before_training_and_gaps_warn(tmp_path):
    with pytest.raises(ValueError, match=r"NoOption must store each constructor option .* missing \['alpha'\]"):
        make_callback(tmp_path, metrics=(NoOption(),))
    with pytest.raises(ValueError, match=r"ReturnsAVector\(\) fails on the reference .* Tensor for 'vector', not one"):
        _fit(tmp_path, metrics=("fid", ReturnsAVector()))
    assert not _fit.trained
    with pytest.warns(UserWarning, match=r"ForgetsAKey\(\) returned no value for \['forgets_extra'\]"):
        values, _ = make_callback(tmp_path, metrics=(ForgetsAKey(),)).evaluate(TinyGAN())
    assert values["forgets"] == 1.0 and math.isnan(values["forgets_extra"])


def test_per_class_labels_that_leave_a_class_out_of_an_evaluation_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"classes \[2\] get fewer than 2 of the 60 generated samples"):
        make_callback(
            tmp_path,
            metrics=("intra_fid",),
            num_samples=60,
            conditions=torch.arange(90) // 30,
            real=RealData(TensorDataset(real_images(37), torch.arange(37) % 3), label_key=1),
        )


def test_the_cli_refuses_num_with_statistics_files(tmp_path, capsys):
    from lightning_fid import cli

    path = _npz(tmp_path, dim=2048, extractor="inception-v3-tf-2015-12-05")
    assert cli.main(["score", path, path, "--num", "10"]) == 2
    assert "--num 10 selects images of a folder" in capsys.readouterr().err


def test_resuming_without_a_cached_reference_says_it_cannot_tell(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    _fit(tmp_path / "a", metrics=("fid",), use_cache=False, extra=(ckpt,), trainer_kw={"enable_checkpointing": True})
    resumed = make_callback(tmp_path, metrics=("fid",), use_cache=False)
    trainer = pl.Trainer(callbacks=[resumed], **trainer_kwargs(tmp_path / "b", max_epochs=3))
    with pytest.warns(UserWarning, match="resuming without a cached reference .* cannot be told"):
        trainer.fit(TinyGAN(), *loaders(), ckpt_path=str(tmp_path / "ckpt" / "epoch=1.ckpt"))
    assert len(resumed.history) == 3


def test_runs_in_one_folder_never_overwrite_each_others_history_and_a_resume_keeps_its_file(tmp_path):
    import json

    first = _fit(tmp_path, metrics=("fid",))
    with pytest.warns(
        UserWarning,
        match="lightning_fid_history.json holds another run's history; this run writes lightning_fid_history-2.json",
    ):
        second = _fit(tmp_path, metrics=("fid",), epochs=1)
    files = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("lightning_fid_history*.json")}
    assert len(files["lightning_fid_history.json"]["evaluations"]) == len(first.history) == 2
    assert len(files["lightning_fid_history-2.json"]["evaluations"]) == len(second.history) == 1
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    resumable = tmp_path / "resumable"
    _fit(resumable, metrics=("fid",), extra=(ckpt,), trainer_kw={"enable_checkpointing": True})
    resumed = make_callback(resumable, metrics=("fid",))
    trainer = pl.Trainer(callbacks=[resumed], **trainer_kwargs(resumable, max_epochs=3))
    trainer.fit(TinyGAN(), *loaders(), ckpt_path=str(tmp_path / "ckpt" / "epoch=1.ckpt"))
    saved = json.loads((resumable / "lightning_fid_history.json").read_text())
    assert len(saved["evaluations"]) == 3 and not (resumable / "lightning_fid_history-2.json").exists()
