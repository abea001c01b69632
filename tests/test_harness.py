"""One harness drives every metric through every path of a real Trainer.

For each registered metric name and the user-metric example of docs/architecture.md, and for each path:

- ``reference``: the logged history equals the metric's functional form on the same features, and the
  declared keys reach the logger, each exactly once per evaluation;
- ``cache``: a cache hit gives the same values as the miss that wrote it, and a changed option is a miss;
- ``resume``: resuming from a checkpoint continues the history with no duplicate or missing evaluation;
- ``nan``: NaN generator output gives NaN for every key with a warning, and training goes on;
- ``processes`` (multiprocess): every metric at once, identical for 1 and 2 gloo processes.

Adding a metric means its class and one entry in ``CASES``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers.tiny import TinyEmbed, TinyFeatures, TinyGAN, loaders, real_images, sample, trainer_kwargs
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import TensorDataset

from lightning_fid import GenerativeMetrics, RealData
from lightning_fid.engine._images import to_uint8
from lightning_fid.engine._reference import forget_resolved
from lightning_fid.engine._sampling import noise_generator
from lightning_fid.extractors.base import run_extractor
from lightning_fid.metrics import (
    CMMD,
    FID,
    KID,
    SFID,
    DensityCoverage,
    FDDINOv2,
    FIDInfinity,
    InceptionScore,
    IntraFID,
    Metric,
    PerClassFID,
    PrecisionRecall,
    cmmd,
    density_coverage,
    fid_infinity,
    frechet_distance,
    inception_score,
    kid,
    precision_recall,
)

N, BATCH, CLASSES = 23, 5, 3
LABELS = torch.arange(N) % CLASSES
REAL_LABELS = torch.arange(37) % CLASSES


class TinyLogits(TinyFeatures):
    """A stand-in classifier: 8 class logits (Inception Score's input)."""

    name = "tiny-logits"

    def forward(self, x):
        return 4 * super().forward(x)


def readme_user_metric() -> type[Metric]:
    """The user-metric example of docs/architecture.md, executed as written (its definition, up to its use)."""
    text = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "class VendiScore" in b)
    scope: dict[str, Any] = {"__name__": __name__}
    exec(compile(block.split("# --- use it")[0], "docs/architecture.md", "exec"), scope)
    cls = scope["VendiScore"]
    cls.__qualname__ = "VendiScore"  # importable from this module, so ddp_spawn can pickle it
    return cls


VendiScore = readme_user_metric()


def conditional(module, batch_size, generator, conditions):
    return module.sample_images(batch_size, generator) * (0.5 + 0.2 * conditions.view(-1, 1, 1, 1))


def _features(net: nn.Module, model: pl.LightningModule, per_class: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(real, generated) features of ``net`` computed directly: the same fixed noise, no callback."""
    model.eval()
    images = []
    for b, start in enumerate(range(0, N, BATCH)):
        n = min(BATCH, N - start)
        g = noise_generator(0, b)
        images.append(conditional(model, n, g, LABELS[start : start + n]) if per_class else model.sample_images(n, g))
    fake = run_extractor(net, to_uint8(torch.cat(images).detach(), (-1, 1)), (0.0, 1.0)).double()
    real = run_extractor(net, to_uint8(real_images(37), (-1, 1)), (0.0, 1.0)).double()
    return real, fake


def _fd(r: torch.Tensor, f: torch.Tensor) -> float:
    return frechet_distance(r.mean(0), torch.cov(r.T), f.mean(0), torch.cov(f.T))


def _per_class(r: torch.Tensor, f: torch.Tensor) -> dict[int, float]:
    return {c: _fd(r[REAL_LABELS == c], f[LABELS == c]) for c in range(CLASSES)}


@dataclass
class Case:
    """A metric in the harness: how to make it, one changed option, its network and its reference."""

    make: Callable[[], Metric | str]
    changed: Callable[[], Metric]
    net: Callable[[], nn.Module]
    expected: Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
    per_class: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)


def _vendi(r: torch.Tensor, f: torch.Tensor) -> dict[str, float]:
    x = f.numpy() / np.linalg.norm(f.numpy(), axis=1, keepdims=True)
    ev = np.clip(np.linalg.eigvalsh(x @ x.T / x.shape[0]), 0, None)
    ev = ev[ev > 1e-15]
    return {"vendi": float(np.exp(-(ev * np.log(ev)).sum()))}


CASES: dict[str, Case] = {
    "fid": Case(lambda: "fid", lambda: FID(key="fid2"), TinyFeatures, lambda r, f: {"fid": _fd(r, f)}),
    "kid": Case(
        lambda: KID(subsets=4, subset_size=10),
        lambda: KID(subsets=4, subset_size=9),
        TinyFeatures,
        lambda r, f: dict(zip(("kid", "kid_std"), kid(r.float(), f.float(), 4, 10, 0))),
    ),
    "cmmd": Case(
        lambda: CMMD(extractor=TinyEmbed(seed=5)),
        lambda: CMMD(sigma=2.0, extractor=TinyEmbed(seed=5)),
        lambda: TinyEmbed(seed=5),
        lambda r, f: {"cmmd": cmmd(r.float(), f.float())},
    ),
    "is": Case(
        lambda: InceptionScore(splits=2, extractor=TinyLogits()),
        lambda: InceptionScore(splits=3, extractor=TinyLogits()),
        TinyLogits,
        lambda r, f: dict(zip(("is", "is_std"), inception_score(f.float(), 2))),
    ),
    "precision": Case(
        lambda: "precision",
        lambda: PrecisionRecall(k=4, report="precision"),
        TinyFeatures,
        lambda r, f: {"precision": precision_recall(r.float(), f.float(), 3)[0]},
    ),
    "recall": Case(
        lambda: "recall",
        lambda: PrecisionRecall(k=4, report="recall"),
        TinyFeatures,
        lambda r, f: {"recall": precision_recall(r.float(), f.float(), 3)[1]},
    ),
    "density": Case(
        lambda: "density",
        lambda: DensityCoverage(k=4, report="density"),
        TinyFeatures,
        lambda r, f: {"density": density_coverage(r.float(), f.float(), 5)[0]},
    ),
    "coverage": Case(
        lambda: "coverage",
        lambda: DensityCoverage(k=4, report="coverage"),
        TinyFeatures,
        lambda r, f: {"coverage": density_coverage(r.float(), f.float(), 5)[1]},
    ),
    "fid_inf": Case(
        lambda: "fid_inf",
        lambda: FIDInfinity(points=5),
        TinyFeatures,
        lambda r, f: {"fid_inf": fid_infinity(r.mean(0), torch.cov(r.T), f.float(), seed=0)},
    ),
    "fd_dinov2": Case(
        lambda: FDDINOv2(extractor=TinyFeatures(seed=4)),
        lambda: FDDINOv2(extractor=TinyFeatures(seed=4), key="fd_dinov2_b"),
        lambda: TinyFeatures(seed=4),
        lambda r, f: {"fd_dinov2": _fd(r, f)},
    ),
    "sfid": Case(
        lambda: SFID(extractor=TinyFeatures(seed=6)),
        lambda: SFID(extractor=TinyFeatures(seed=6), key="sfid2"),
        lambda: TinyFeatures(seed=6),
        lambda r, f: {"sfid": _fd(r, f)},
    ),
    "fid_per_class": Case(
        lambda: "fid_per_class",
        lambda: PerClassFID(key="pc"),
        TinyFeatures,
        lambda r, f: {f"fid/class_{c}": v for c, v in _per_class(r, f).items()},
        per_class=True,
    ),
    "intra_fid": Case(
        lambda: "intra_fid",
        lambda: IntraFID(key="intra2"),
        TinyFeatures,
        lambda r, f: {"intra_fid": sum(_per_class(r, f).values()) / CLASSES},
        per_class=True,
    ),
    "user: docs VendiScore": Case(lambda: VendiScore(), lambda: VendiScore(key="vendi2"), TinyFeatures, _vendi),
}


class RecordingLogger(Logger):
    """Every ``log_metrics`` call, in order (what TensorBoard, CSV, W&B would receive)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))


def _callback(tmp_path: Path, case: Case, metric: Metric | str | None = None, **kw: Any) -> GenerativeMetrics:
    real = TensorDataset(real_images(37), REAL_LABELS) if case.per_class else TensorDataset(real_images(37))
    args: dict[str, Any] = dict(
        real=RealData(real, label_key=1 if case.per_class else None),
        metrics=[metric or case.make()],
        sample_fn=conditional if case.per_class else sample,
        conditions=LABELS if case.per_class else None,
        feature_extractor=TinyFeatures(),
        num_samples=N,
        batch_size=BATCH,
        cache_dir=tmp_path / "cache",
        progress=False,
        log_images=0,
    )
    args.update(kw)
    return GenerativeMetrics(**args)


def _fit(
    tmp_path: Path,
    callback: GenerativeMetrics,
    model: pl.LightningModule | None = None,
    epochs: int = 1,
    extra: tuple = (),
    ckpt_path: str | None = None,
    logger: Logger | bool = False,
) -> pl.LightningModule:
    model = model or TinyGAN()
    kw = trainer_kwargs(
        tmp_path,
        max_epochs=epochs,
        num_sanity_val_steps=0,
        limit_train_batches=1,
        logger=logger,
        enable_checkpointing=any(isinstance(cb, ModelCheckpoint) for cb in extra),
    )
    pl.Trainer(callbacks=[callback, *extra], **kw).fit(model, *loaders(), ckpt_path=ckpt_path)
    return model


def _declared(callback: GenerativeMetrics) -> list[str]:
    return callback.keys()


@pytest.fixture(autouse=True)
def _fresh():
    forget_resolved()


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_values_and_logged_keys(tmp_path, name):
    case = CASES[name]
    logger = RecordingLogger()
    callback = _callback(tmp_path, case)
    model = _fit(tmp_path, callback, epochs=2, logger=logger)
    expected = case.expected(*_features(case.net(), model, case.per_class))
    got = callback.history[-1]
    errors = [key + "_se" for key in callback.evaluator.scorer.error_keys()]  # error bars: tests/test_error_bars.py
    assert set(expected) | set(errors) == set(_declared(callback))
    assert all(math.isfinite(got[key]) and got[key] >= 0 for key in errors)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    for key in _declared(callback) + ["eval_seconds"]:  # each key once per evaluation
        logged = [step for step, metrics in logger.calls if key in metrics]
        assert len(logged) == len(callback.history) and logged == sorted(set(logged)), (key, logged)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cache_hit_equals_miss_and_a_changed_option_misses(tmp_path, name):
    case = CASES[name]
    model = TinyGAN()
    miss = _callback(tmp_path, case)
    values, _ = miss.evaluate(model)
    files = set((tmp_path / "cache").glob("*.npz"))
    assert files, "the miss must write the cache"
    forget_resolved()
    hit = _callback(tmp_path, case)
    assert hit.evaluate(model)[0] == values and set((tmp_path / "cache").glob("*.npz")) == files
    forget_resolved()
    changed = _callback(tmp_path, case, metric=case.changed())
    changed.evaluate(model)
    assert changed.evaluator.reference.key != hit.evaluator.reference.key
    assert set((tmp_path / "cache").glob("*.npz")) > files  # a new entry, the old one untouched


@pytest.mark.parametrize("name", sorted(CASES))
def test_resume_continues_the_history(tmp_path, name):
    case = CASES[name]
    whole = _callback(tmp_path, case)
    _fit(tmp_path / "whole", whole, epochs=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    _fit(tmp_path / "first", _callback(tmp_path, case), epochs=1, extra=(ckpt,))
    resumed = _callback(tmp_path, case)
    _fit(tmp_path / "second", resumed, epochs=3, ckpt_path=str(tmp_path / "ckpt" / "epoch=0.ckpt"))
    assert [(e["epoch"], e["step"]) for e in resumed.history] == [(e["epoch"], e["step"]) for e in whole.history]
    for a, b in zip(whole.history, resumed.history):
        for key in _declared(whole):
            assert b[key] == pytest.approx(a[key], rel=1e-9, nan_ok=True), key


@pytest.mark.parametrize("name", sorted(CASES))
def test_nan_generator_output_is_nan_with_a_warning(tmp_path, name):
    case = CASES[name]
    callback = _callback(tmp_path, case)
    with pytest.warns(UserWarning, match="NaN/inf images; logging NaN"):
        _fit(tmp_path, callback, model=TinyGAN(nan_from_epoch=1), epochs=3)
    assert [e["epoch"] for e in callback.history] == [0, 1, 2]  # training went on
    assert all(math.isfinite(callback.history[0][k]) for k in _declared(callback))
    for entry in callback.history[1:]:
        assert all(math.isnan(entry[k]) for k in _declared(callback))


def _all_metrics(rank_count: int, tmp_path: Path) -> list[dict[str, float]]:
    metrics = [case.make() for case in CASES.values() if not case.per_class]  # per-class: test_callback_ddp
    callback = GenerativeMetrics(
        real=TensorDataset(real_images(37)),
        metrics=metrics,
        sample_fn=sample,
        feature_extractor=TinyFeatures(),
        num_samples=N,
        batch_size=BATCH,
        use_cache=False,
        progress=False,
        log_images=0,
    )
    kw = trainer_kwargs(tmp_path, max_epochs=2, devices=rank_count, strategy="ddp_spawn" if rank_count > 1 else "auto")
    pl.Trainer(callbacks=[callback], **kw).fit(TinyGAN(lr=0.0, bn_momentum=0.0), *loaders())
    return callback.history


@pytest.mark.multiprocess
@pytest.mark.slow
def test_every_metric_is_identical_for_one_and_two_processes(tmp_path):
    one = _all_metrics(1, tmp_path / "one")
    two = _all_metrics(2, tmp_path / "two")
    assert len(one) == len(two) == 2
    keys = [k for k in one[0] if k not in ("epoch", "step", "eval_seconds")]
    assert len(keys) >= 12
    for a, b in zip(one, two):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-9), key
