"""Label policies, minimum over seeds, named protocols and the protocol card, end to end."""

from __future__ import annotations

import importlib.metadata
import json
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from helpers.dist import run_distributed
from helpers.tiny import TinyFeatures, TinyGAN, loaders, make_callback, real_images, trainer_kwargs
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import TensorDataset

from lightning_fid.engine import Evaluator
from lightning_fid.engine._card import card_differences, flatten
from lightning_fid.engine._labels import balanced_labels, uniform_labels
from lightning_fid.metrics import FID, KID
from lightning_fid.protocols import PROTOCOLS, deviations, get_protocol

# ---------------------------------------------------------------------------------------- label policies


def test_uniform_labels_are_keyed_by_seed_and_index_only():
    full = uniform_labels(5000, 10, seed=3)
    assert torch.equal(uniform_labels(1234, 10, seed=3), full[:1234])  # any prefix: the same labels
    assert not torch.equal(uniform_labels(5000, 10, seed=4), full)  # another seed, other labels
    assert full.dtype == torch.int64 and int(full.min()) == 0 and int(full.max()) == 9
    counts = torch.bincount(full, minlength=10).double()
    chi2 = float(((counts - 500) ** 2 / 500).sum())
    assert chi2 < 27.9  # chi-square, 9 degrees of freedom, p = 0.001


def test_balanced_labels_give_each_class_n_over_c_and_every_prefix_is_balanced():
    labels = balanced_labels(50_000, 1000)
    assert torch.equal(torch.bincount(labels), torch.full((1000,), 50))
    assert int(torch.bincount(labels[:2500], minlength=1000).max() - torch.bincount(labels[:2500]).min()) <= 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(conditions="uniform"), "needs num_classes"),
        (dict(conditions="sorted", num_classes=3), "choose from"),
        (dict(num_classes=3), "only goes with"),
        (dict(conditions="balanced", num_classes=7, num_samples=20), "divisible by num_classes=7"),
        (dict(conditions="balanced", num_classes=4, num_samples=20, final_num_samples=30), "generates 30"),
        (dict(final_seeds=3), "final_num_samples"),
        (dict(final_seeds=0, final_num_samples=40), "final_seeds must be an integer >= 1"),
        (dict(protocol="stylegan"), "choose from"),
    ],
)
def test_bad_label_seed_and_protocol_options_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_callback(**{"num_samples": 20, **kwargs})


class ConditionalGAN(TinyGAN):
    """Records the labels each sampling call receives; the class shifts the image."""

    seen: list[torch.Tensor]

    def sample_images(self, batch_size, generator, conditions=None):
        type(self).seen.append(torch.as_tensor(conditions).clone())
        return (
            super().sample_images(batch_size, generator) + 0.05 * torch.as_tensor(conditions).view(-1, 1, 1, 1)
        ).clamp(-1, 1)


def _labels_seen(rank, world, policy):
    ConditionalGAN.seen = []
    evaluator = Evaluator(
        TensorDataset(real_images(37)),
        FID(),
        feature_extractor=TinyFeatures(),
        num_samples=24,
        batch_size=5,
        conditions=policy,
        num_classes=4,
        progress=False,
    )
    model = ConditionalGAN()
    evaluator.prepare(model)  # the dry run samples too
    ConditionalGAN.seen = []
    values, _ = evaluator.evaluate(model)
    return values, ConditionalGAN.seen


def _both_policies(rank, world):
    return {policy: _labels_seen(rank, world, policy) for policy in ("uniform", "balanced")}


def test_label_policies_reach_the_sampler_identically_for_one_and_two_processes(tmp_path):
    two = run_distributed(_both_policies, 2, tmp_path)  # one launch for both policies
    for policy in ("uniform", "balanced"):
        one_values, seen = _labels_seen(0, 1, policy)
        expected = uniform_labels(24, 4, 0) if policy == "uniform" else balanced_labels(24, 4)
        assert torch.equal(torch.cat(seen), expected)  # batches in order on one process
        for values, _ in (result[policy] for result in two):  # the same values (moments summed in another order)
            assert values == pytest.approx(one_values, rel=1e-12)
        dealt = torch.cat([b for result in two for b in result[policy][1]])  # every sample once, with its label
        assert torch.equal(dealt.sort().values, expected.sort().values)


# ---------------------------------------------------------------------------------------- minimum over seeds


def test_final_seeds_log_mean_std_min_max_of_independent_seed_evaluations(tmp_path):
    callback = make_callback(
        tmp_path, metrics=("fid", KID(subsets=3, subset_size=10)), final_num_samples=30, final_seeds=3
    )
    model = TinyGAN()
    pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1), callbacks=[callback]).fit(model, *loaders())
    final = callback.final_metrics
    values = ["fid", "kid", "kid_std"]
    errors = {f"final_{k}_se" for k in values} & set(final)  # with error bars: the SE of the mean over seeds
    assert set(final) == {f"final_{s}{k}" for k in values for s in ("", "std_", "min_", "max_")} | errors
    runs = [callback.evaluator.evaluate(model, 30, seed=seed)[0] for seed in (0, 1, 2)]
    fids = [run["fid"] for run in runs]
    assert len(set(fids)) == 3  # three different noise draws
    assert final["final_fid"] == pytest.approx(np.mean(fids), rel=1e-12)
    assert final["final_std_fid"] == pytest.approx(np.std(fids, ddof=1), rel=1e-9)
    assert (final["final_min_fid"], final["final_max_fid"]) == (min(fids), max(fids))
    assert callback.evaluator.seed == 0  # the run's seed is back
    if "final_fid_se" in final:  # independent seeds: the standard error of their mean
        expected = np.sqrt(sum(run["fid_se"] ** 2 for run in runs)) / 3
        assert final["final_fid_se"] == pytest.approx(expected, rel=1e-9)
    assert callback.card["final_statistics"]["final_min_<key>"].startswith("minimum over the seeds")


# ---------------------------------------------------------------------------------------- protocols


def test_every_protocol_resolves_its_metrics_and_names_what_it_is_comparable_with():
    for name, protocol in PROTOCOLS.items():
        metrics = protocol.default_metrics()
        keys = [k for m in metrics for k in m.keys()]
        assert keys[0] == "fid" and protocol.comparable_with and protocol.identical and protocol.close
        assert deviations(protocol, metrics, None) == [], name
    adm = get_protocol("adm")
    keys = [k for m in adm.default_metrics() for k in m.keys()]
    assert {"fid", "sfid", "is", "precision", "recall"} <= set(keys)
    pr = next(m for m in adm.default_metrics() if "precision" in m.keys())
    assert pr.k == 3
    assert next(m for m in adm.default_metrics() if m.key == "is").split_size == 5000


def test_explicit_options_override_the_protocol_and_are_recorded_as_deviations():
    adm = get_protocol("adm")
    metrics = adm.resolve(["fid", "is", KID(subsets=5, subset_size=10)])
    assert next(m for m in metrics if m.key == "is").split_size == 5000  # a name gets the protocol's options
    found = deviations(adm, metrics, None)
    assert any("missing metric SFID" in d for d in found) and any("missing metric PrecisionRecall" in d for d in found)
    assert any(d.startswith("extra metric KID") for d in found)
    default = get_protocol("torch-fidelity")
    assert deviations(default, default.resolve(["fid", "kid"]), None) == []
    assert "instead of the protocol's KID(subsets=100" in deviations(default, [KID(subsets=5)], None)[0]
    assert "preprocess='tf'" in deviations(default, [FID()], nn.Identity())[0]


# ---------------------------------------------------------------------------------------- the card


def test_the_card_is_logged_stored_in_history_and_checkpoint_and_a_changed_resume_warns(tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    ConditionalGAN.seen = []
    conditional = dict(conditions="balanced", num_classes=1, num_samples=23, sample_fn=None)
    callback = make_callback(tmp_path, **conditional)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    kw = trainer_kwargs(tmp_path, max_epochs=1, logger=logger, enable_checkpointing=True)
    pl.Trainer(**kw, callbacks=[callback, ckpt]).fit(ConditionalGAN(), *loaders())
    card = callback.card
    assert card["protocol"] == "torch-fidelity" and card["labels"].startswith("balanced")
    assert card["generated"]["num_samples"] == 23 and card["generated"]["batch_size"] == 5
    assert card["reference"]["slots"]["tiny-features"]["n_real"] == 37
    assert card["reference"]["identity"] == callback.evaluator.reference.key
    assert card["extractors"]["tiny-features"]["weights_fingerprint"]
    assert card["versions"]["torch"] == importlib.metadata.version("torch")
    history = json.loads((tmp_path / "run" / "version_0" / "lightning_fid_history.json").read_text())
    assert history["card"] == card
    hparams = yaml.safe_load((tmp_path / "run" / "version_0" / "hparams.yaml").read_text())
    assert hparams["lightning_fid_card.protocol"] == "torch-fidelity"
    assert hparams["lightning_fid_card.generated.num_samples"] == 23
    assert (
        torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"][callback.state_key]["card"] == card
    )

    resumed = make_callback(tmp_path, **{**conditional, "final_num_samples": 40})
    kw = trainer_kwargs(tmp_path, max_epochs=2, logger=False)
    with pytest.warns(UserWarning, match=r"card differs in \['generated.final_num_samples', 'generated.final_seeds'\]"):
        pl.Trainer(**kw, callbacks=[resumed]).fit(
            ConditionalGAN(), *loaders(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
        )


class RefusingLogger(CSVLogger):
    """A logger that refuses hyperparameters, as MLflow refuses a changed parameter on a resumed run."""

    def log_hyperparams(self, params, *args, **kwargs):
        if any(str(k).startswith("lightning_fid_card.") for k in dict(params)):
            raise RuntimeError("Changing param values is not allowed")
        super().log_hyperparams(params, *args, **kwargs)


def test_a_logger_refusing_the_card_warns_and_training_goes_on(tmp_path):
    callback = make_callback(tmp_path)
    kw = trainer_kwargs(tmp_path, max_epochs=2, logger=RefusingLogger(tmp_path))
    with pytest.warns(UserWarning, match="RefusingLogger did not take the protocol card"):
        pl.Trainer(**kw, callbacks=[callback]).fit(TinyGAN(), *loaders())
    assert len(callback.history) == 2 and callback.card["protocol"] == "torch-fidelity"


def test_card_differences_name_dotted_fields():
    old = {"a": {"b": 1, "c": [{"d": 2}]}, "e": 3}
    new = {"a": {"b": 1, "c": [{"d": 5}]}, "f": 3}
    assert card_differences(old, new) == ["a.c.0.d", "e", "f"]
    assert flatten(old) == {"a.b": 1, "a.c.0.d": 2, "e": 3}


def test_a_pytorch_fid_protocol_reads_inception_the_pytorch_fid_way(tmp_path, monkeypatch):
    from helpers.weights import write_random_inception

    path = write_random_inception(tmp_path / "pt_inception.pth")
    evaluator = Evaluator(
        TensorDataset(real_images(12)),
        protocol="pytorch-fid",
        weights={"inception": path},
        num_samples=10,
        batch_size=5,
        progress=False,
        sample_fn=lambda m, n, g: torch.rand(n, 3, 8, 8, generator=g) * 2 - 1,
        error_bars=False,
    )
    card = evaluator.card()
    assert card["protocol"] == "pytorch-fid" and card["deviations"] == []
    (entry,) = card["extractors"].values()
    assert "preprocess='pytorch-fid'" in entry["preprocessing"]
    values, _ = evaluator.evaluate(nn.Linear(1, 1))
    assert math.isfinite(values["fid"])


def test_the_edm2_protocol_reads_dinov2_with_edm2s_torch_resize(tmp_path):
    from helpers.weights import write_random_inception
    from test_dinov2 import write_meta_checkpoint

    weights = {
        "inception": write_random_inception(tmp_path / "pt_inception.pth"),
        "dinov2": write_meta_checkpoint(tmp_path / "dinov2_vitl14_pretrain.pth"),
    }
    evaluator = Evaluator(
        TensorDataset(real_images(12)),
        protocol="edm2",
        weights=weights,
        num_samples=10,
        batch_size=5,
        progress=False,
        error_bars=False,
    )
    with pytest.warns(UserWarning, match="not the published dinov2 weights"):
        card = evaluator.card()
    assert [m["key"] for m in card["metrics"]] == ["fid", "fd_dinov2"] and card["deviations"] == []
    assert card["extractors"]["dinov2"]["network"] == "dinov2-vit-l-14-torch-resize"
    assert "resize='torch'" in card["extractors"]["dinov2"]["preprocessing"]
    assert card["extractors"]["inception"]["weights_sha256"]  # the file's hash, as published weights carry
