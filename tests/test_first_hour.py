"""A new user's first hour: the frictions found when following README.md, each held by a test."""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from helpers.tiny import TinyGAN, loaders, make_callback, sample, trainer_kwargs
from lightning.pytorch.loggers import CSVLogger


# ---------------------------------------------------------------- errors that point at the fix
def test_an_unclamped_sampler_is_told_to_clamp(tmp_path):
    cb = make_callback(tmp_path, metrics=("fid",), sample_fn=lambda m, n, g: sample(m, n, g) * 40)
    with pytest.raises(ValueError, match=r"generated images span .*clamp the sampler's output .*images.clamp\(-1, 1\)"):
        cb.evaluate(TinyGAN())


def test_bf16_true_weights_with_float32_noise_are_explained_in_the_dry_run(tmp_path):
    def readme_sample(module, batch_size, generator):  # the README's sampler before the dtype cast
        return module(torch.randn(batch_size, 8, generator=generator).to(module.device))

    cb = make_callback(tmp_path, metrics=("fid",), sample_fn=readme_sample)
    with pytest.raises(
        ValueError,
        match=r"weights are torch.bfloat16, as with Trainer\(precision='bf16-true'\).* cast the noise .*module.dtype",
    ):
        cb.evaluate(TinyGAN().to(torch.bfloat16))

    def fixed(module, batch_size, generator):  # the pattern README shows
        return module(torch.randn(batch_size, 8, generator=generator).to(module.device, module.dtype))

    values, _ = make_callback(tmp_path, metrics=("fid",), sample_fn=fixed).evaluate(TinyGAN().to(torch.bfloat16))
    assert math.isfinite(values["fid"])


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"real='/missing/folder': no such image folder or reference file"):
        make_callback(tmp_path, real="/missing/folder")


def test_the_offline_message_names_real_options():
    from lightning_fid.extractors.weights import EXPLICIT, INCEPTION_WEIGHTS, _offline_message

    message = _offline_message(INCEPTION_WEIGHTS, tmp := __import__("pathlib").Path("/x/w.pth"), OSError("offline"))
    assert "weights_path= explicitly" not in message and EXPLICIT["inception"] in message and str(tmp) in message
    assert "--inception-weights FILE in the CLI" in message


# ---------------------------------------------------------------- checks in the order a user pays for them
def test_monitor_checks_come_before_the_dry_run_and_the_reference_pass(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping

    calls = []
    cb = make_callback(
        tmp_path, metrics=("fid",), every_n_epochs=2, sample_fn=lambda m, n, g: calls.append(n) or sample(m, n, g)
    )
    trainer = pl.Trainer(callbacks=[cb, EarlyStopping(monitor="fid")], **trainer_kwargs(tmp_path))
    with pytest.raises(ValueError, match="would also check between evaluations"):
        trainer.fit(TinyGAN(), *loaders())
    assert calls == []  # nothing sampled, nothing read


def test_the_schedule_check_comes_before_the_reference_pass(tmp_path):
    from torch.utils.data import DataLoader, IterableDataset

    class Endless(IterableDataset):
        def __iter__(self):
            while True:
                yield (torch.zeros(3, 8, 8),)

    class Counting(torch.utils.data.Dataset):
        reads = 0

        def __len__(self):
            return 37

        def __getitem__(self, i):
            Counting.reads += 1
            return (torch.zeros(3, 8, 8),)

    class NoValidation(TinyGAN):
        validation_step = None

    cb = make_callback(tmp_path, metrics=("fid",), real=Counting(), every_n_epochs=2)
    kw = trainer_kwargs(tmp_path, max_steps=4, max_epochs=None, limit_train_batches=None, limit_val_batches=0)
    with pytest.raises(ValueError, match=r"never fires: the training data has no length"):
        pl.Trainer(callbacks=[cb], **kw).fit(NoValidation(), DataLoader(Endless(), batch_size=4))
    assert Counting.reads == 0


# ---------------------------------------------------------------- warnings that alarm for no reason
def test_the_quick_start_configuration_warns_nothing_about_loggers_or_sync(tmp_path, recwarn):
    cb = make_callback(tmp_path, metrics=("fid",))
    pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=2)).fit(TinyGAN(), *loaders())
    texts = [str(w.message) for w in recwarn]
    assert not [t for t in texts if "no logger configured" in t or "sync_dist" in t], texts


# ---------------------------------------------------------------- files where the user did not ask for them
def test_without_a_logger_nothing_lands_in_the_working_directory(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cb = make_callback(tmp_path, metrics=("fid",), log_images=4)
    kw = trainer_kwargs(tmp_path, max_epochs=2)
    kw.pop("default_root_dir")  # Lightning's default: the working directory
    pl.Trainer(callbacks=[cb], **kw).fit(TinyGAN(), *loaders())
    assert len(cb.history) == 2 and sorted(p.name for p in work.iterdir()) == []


def test_with_a_logger_the_history_and_grids_sit_next_to_its_files(tmp_path):
    cb = make_callback(tmp_path, metrics=("fid",), log_images=4)
    logger = CSVLogger(tmp_path / "logs")
    pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=2, logger=logger)).fit(TinyGAN(), *loaders())
    folder = tmp_path / "logs" / "lightning_logs" / "version_0"
    assert (folder / "lightning_fid_history.json").is_file() and len(list((folder / "samples").glob("*.png"))) == 2


def test_the_spawn_read_back_file_is_never_left_behind(tmp_path):
    from lightning_fid.callbacks._history import History

    history = History("x")
    trainer = pl.Trainer(**trainer_kwargs(tmp_path))
    history.append({"epoch": 0, "step": 1, "fid": 1.0}, trainer)
    assert not history.spawn_file.exists()  # the launching process keeps it in memory
    history.owner_pid = -1  # as in a spawned process
    history.append({"epoch": 1, "step": 2, "fid": 0.5}, trainer)
    assert history.spawn_file.is_file()
    launcher = History("x")
    launcher.token = history.token
    assert [e["fid"] for e in launcher.entries] == [1.0, 0.5] and not history.spawn_file.exists()


# ---------------------------------------------------------------- Lightning's conventions
def test_fast_dev_run_only_dry_runs_and_says_so(tmp_path, caplog):
    import logging

    calls = []
    cb = make_callback(tmp_path, metrics=("fid",), sample_fn=lambda m, n, g: calls.append(n) or sample(m, n, g))
    kw = trainer_kwargs(tmp_path, fast_dev_run=True)
    for key in ("max_epochs", "limit_train_batches", "limit_val_batches", "num_sanity_val_steps"):
        kw.pop(key)
    with caplog.at_level(logging.INFO):
        pl.Trainer(callbacks=[cb], **kw).fit(TinyGAN(), *loaders())
    assert cb.history == [] and cb.evaluator.reference is None and sum(calls) == 5 + 3 + 3  # the dry run only
    assert "fast_dev_run: the dry run checked sampling" in caplog.text


def test_validate_and_test_without_their_step_are_refused_by_lightning_and_evaluate_works(tmp_path):
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    class Plain(TinyGAN):
        validation_step = None

    cb = make_callback(tmp_path, metrics=("fid",))
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path))
    with pytest.raises(MisconfigurationException, match=r"No `validation_step\(\)` method defined"):
        trainer.validate(Plain(), loaders()[1], verbose=False)
    with pytest.raises(MisconfigurationException, match=r"No `test_step\(\)` method defined"):
        trainer.test(Plain(), loaders()[1], verbose=False)
    assert math.isfinite(cb.evaluate(Plain())[0]["fid"])  # what the docs say to use instead


def test_validate_after_fit_adds_no_row_to_the_training_history(tmp_path):
    cb = make_callback(tmp_path, metrics=("fid",))
    trainer = pl.Trainer(callbacks=[cb], **trainer_kwargs(tmp_path, max_epochs=2))
    model = TinyGAN()
    trainer.fit(model, *loaders())
    before = list(cb.history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (validated,) = trainer.validate(model, loaders()[1], verbose=False)
    assert cb.history == before and "validate/fid" in validated and "fid" not in validated


# ---------------------------------------------------------------- progress and feedback
def test_prog_bar_shows_the_first_metric(tmp_path):
    seen = []

    class Bar(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(dict(trainer.progress_bar_metrics))

    cb = make_callback(tmp_path, metrics=("fid",), prog_bar=True)
    pl.Trainer(callbacks=[cb, Bar()], **trainer_kwargs(tmp_path, max_epochs=1)).fit(TinyGAN(), *loaders())
    assert seen and seen[-1]["fid"] == pytest.approx(cb.history[-1]["fid"], rel=1e-6)
