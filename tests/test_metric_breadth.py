"""The metrics beyond FID / KID / CMMD through the metric table: callback and CLI names, one
extractor pass per network (IS logits come with the FID features), values equal to the pure functions."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
from helpers.tiny import TinyFeatures, TinyGAN, loaders, make_callback, real_images, trainer_kwargs
from helpers.weights import write_random_inception

from lightning_fid.engine._images import to_uint8
from lightning_fid.engine._pipeline import Accumulator
from lightning_fid.engine._sampling import noise_generator
from lightning_fid.engine._slots import build_slots
from lightning_fid.extractors.base import run_extractor
from lightning_fid.metrics import (
    FDDINOv2,
    density_coverage,
    fid_infinity,
    frechet_distance,
    inception_score,
    precision_recall,
    resolve_metrics,
)

BALLS = ("fid", "precision", "recall", "density", "coverage", "fid_inf")


def _features(model, n=23, batch=5):
    model.eval()
    images = torch.cat(
        [model.sample_images(min(batch, n - s), noise_generator(0, b)) for b, s in enumerate(range(0, n, batch))]
    ).detach()
    fake = run_extractor(TinyFeatures(), to_uint8(images, (-1, 1)), (0.0, 1.0))
    real = run_extractor(TinyFeatures(), to_uint8(real_images(37), (-1, 1)), (0.0, 1.0))
    return real, fake


def test_ball_metrics_and_fid_inf_in_a_trainer_equal_the_functions(tmp_path):
    cb = make_callback(tmp_path, metrics=BALLS)
    model = TinyGAN()
    pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=1)).fit(model, *loaders())
    real, fake = _features(model)
    got = cb.history[-1]
    assert (got["precision"], got["recall"]) == pytest.approx(precision_recall(real, fake, 3), rel=1e-12)
    assert (got["density"], got["coverage"]) == pytest.approx(density_coverage(real, fake, 5), rel=1e-12)
    r, f = real.double(), fake.double()
    assert got["fid"] == pytest.approx(frechet_distance(r.mean(0), torch.cov(r.T), f.mean(0), torch.cov(f.T)), rel=1e-9)
    expected_inf = fid_infinity(r.mean(0), torch.cov(r.T), fake, seed=0)
    assert got["fid_inf"] == pytest.approx(expected_inf, rel=1e-9)
    assert cb.evaluator.slots[0].module.module.calls > 0 and len(cb.evaluator.slots) == 1  # one network for all six


def test_fd_dinov2_slot_takes_its_own_extractor(tmp_path):
    encoder = TinyFeatures(seed=4)
    cb = make_callback(tmp_path, metrics=("fid", FDDINOv2(extractor=encoder)))
    model = TinyGAN()
    values, _ = cb.evaluate(model)
    assert [s.name for s in cb.evaluator.slots] == ["tiny-features", "tiny-features-2"]
    assert cb.evaluator.slots[1].module.module is encoder
    assert values["fd_dinov2"] != values["fid"] and values["fd_dinov2"] > 0


@pytest.mark.slow
def test_inception_score_shares_the_fid_forward_pass(tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    weights = write_random_inception(tmp_path / "inception.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slots, _ = build_slots(resolve_metrics(("fid", "kid", "is")), weights={"inception": weights})
    assert [s.name for s in slots] == ["inception", "inception-logits"] and slots[0].module is slots[1].module
    assert slots[1].info.feature_dim == 1008 and slots[1].output == 1
    calls = []
    slots[0].module.module.net.register_forward_hook(lambda *a: calls.append(1))
    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    acc = Accumulator(slots, torch.device("cpu"))
    acc.add(images, torch.arange(6))
    stats = acc.finish()
    assert len(calls) == 1  # one forward pass feeds FID, KID and IS
    bare = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights)
    )
    with torch.no_grad():
        pool, logits = bare(images)
    torch.testing.assert_close(stats["inception"].features, pool, rtol=1e-5, atol=1e-5)
    assert inception_score(stats["inception-logits"].features, splits=2) == pytest.approx(
        inception_score(logits, 2), rel=1e-6
    )


def test_cli_scores_ball_metrics_on_folders(tmp_path, capsys):
    import json

    from PIL import Image

    from lightning_fid import cli

    weights = write_random_inception(tmp_path / "inception.pth")
    for name, shift in (("a", 0.0), ("b", 0.2)):
        folder = tmp_path / name
        folder.mkdir()
        g = torch.Generator().manual_seed(len(name))
        for i in range(8):
            pixels = (torch.rand(24, 24, 3, generator=g) * 0.7 + shift).clamp(0, 1).mul(255).byte().numpy()
            Image.fromarray(pixels).save(folder / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(
            [
                "score",
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                "--metrics",
                "precision,recall,coverage",
                "--json",
                "--inception-weights",
                str(weights),
            ]
        )
    values = json.loads(capsys.readouterr().out)
    assert code == 0 and set(values) >= {"precision", "recall", "coverage"}
    assert all(0.0 <= values[k] <= 1.0 for k in ("precision", "recall", "coverage"))
