"""The callback's evaluations as the trainer sees them: a scheduled one (logged and recorded), the
end-of-fit one over ``final_seeds`` noise seeds, the test one; and the protocol card, published once
per run and compared with a resumed run's."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_fid.callbacks._reporting import log_grid, log_values
from lightning_fid.callbacks._run import evaluate_choices
from lightning_fid.engine._card import card_differences, flatten
from lightning_fid.metrics.base import check_int

#: what the final keys mean under ``final_seeds > 1`` (the card says it too)
SEED_STATISTICS = {
    "": "mean over the seeds",
    "std_": "sample standard deviation over the seeds (ddof=1)",
    "min_": "minimum over the seeds (EDM reports the minimum FID of 3 seed ranges)",
    "max_": "maximum over the seeds",
}


def check_final_seeds(final_seeds: Any, final_num_samples: int | None) -> int:
    """``final_seeds`` checked: an integer >= 1, above 1 only with a final evaluation.

    Raises:
        ValueError: naming the option to change.
    """
    check_int(final_seeds, "final_seeds", 1)
    if final_seeds > 1 and final_num_samples is None:
        raise ValueError("final_seeds repeats the final evaluation: set final_num_samples= too")
    return final_seeds


def evaluate_and_log(
    callback: Callback,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    in_validation: bool = False,
    on_step: bool = False,
    stage: str = "",
) -> None:
    """One scheduled (or ``validate``) evaluation: values to loggers and ``callback_metrics``, the
    training run's to the history, the grid to rank 0's loggers."""
    start = time.perf_counter()
    evaluator = callback.evaluator
    values, grid = evaluate_choices(
        evaluator,
        callback._choices,
        trainer,
        pl_module,
        callback,
        evaluator.num_samples,
        in_validation,
        paired=not stage,  # a scheduled evaluation of the fit: compared with the best one so far
    )
    values["eval_seconds"] = time.perf_counter() - start
    shown = {stage + callback.prefix + k for k in callback.keys()[:1]} if callback.prog_bar else set()
    log_values(trainer, pl_module, {stage + callback.prefix + k: v for k, v in values.items()}, on_step, shown)
    keys = evaluator.keys()
    if not stage:  # evaluations of the training run only
        callback.run.record(trainer, values, keys[0] if keys else None, callback.metrics[0].higher_is_better)
    if grid is not None and trainer.is_global_zero:
        log_grid(trainer, grid, f"{callback.prefix}samples", trainer.global_step, trainer.current_epoch)


def _is_error(key: str, keys: Iterable[str]) -> bool:
    """Whether ``key`` is the standard error of another value (``<key>_se``, ``<key>_se_raw``)."""
    base = key[: -len("_raw")] if key.endswith("_se_raw") else key
    raw = "_raw" if base != key else ""
    return base.endswith("_se") and base[:-3] + raw in keys


def seed_statistics(runs: list[dict[str, float]]) -> dict[str, float]:
    """One key per value for a single seed; for several, the mean under the key and ``std_<key>``,
    ``min_<key>``, ``max_<key>`` (NaN in any seed makes them NaN: never a number from part of the
    seeds). A standard error ``<key>_se`` becomes the standard error of the mean over the (independent)
    seeds, sqrt(sum se^2) / n."""
    if len(runs) == 1:
        return dict(runs[0])
    out: dict[str, float] = {}
    for key in runs[0]:
        x = np.array([r[key] for r in runs], dtype=np.float64)
        nan = bool(np.isnan(x).any())
        if _is_error(key, runs[0]):
            out[key] = math.nan if nan else float(np.sqrt((x**2).sum()) / len(x))
            continue
        out[key] = math.nan if nan else float(x.mean())
        out["std_" + key] = math.nan if nan else float(x.std(ddof=1))
        out["min_" + key] = math.nan if nan else float(x.min())
        out["max_" + key] = math.nan if nan else float(x.max())
    return out


def final_keys(names: list[str], final_seeds: int) -> list[str]:
    """The ``final_`` keys (before the prefix) of metric keys ``names``."""
    statistics = list(SEED_STATISTICS) if final_seeds > 1 else [""]
    return ["final_" + s + n for n in names for s in ([""] if _is_error(n, names) else statistics)]


def final_evaluation(callback: Callback, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """The end-of-fit evaluation at ``final_num_samples``, once per seed of ``final_seeds`` (the run's
    seed, then the next ones), recorded and sent to every logger."""
    evaluator = callback.evaluator
    base = evaluator.seed
    runs = []
    try:
        for i in range(callback.final_seeds):
            evaluator.seed = base + i  # other fixed noise (and uniform labels) for each seed
            values, _ = evaluate_choices(
                evaluator,
                callback._choices,
                trainer,
                pl_module,
                callback,
                callback.final_num_samples,
                False,
                callback.run.raw_snapshot,
            )
            runs.append(values)
    finally:
        evaluator.seed = base
    final = seed_statistics(runs)
    callback.run.finish({callback.prefix + "final_" + k: v for k, v in final.items()}, trainer)


def test_evaluation(callback: Callback, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """``trainer.test``: ``final_num_samples`` (or ``num_samples``) samples, logged as ``test/<key>``."""
    n = callback.final_num_samples or callback.evaluator.num_samples
    values, _ = evaluate_choices(callback.evaluator, callback._choices, trainer, pl_module, callback, n)
    log_values(trainer, pl_module, {"test/" + callback.prefix + k: v for k, v in values.items()})  # not recorded


def _uncached(field: str, old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    values = [flatten(card).get(field) for card in (old or {}, new)]
    return field == "reference.identity" and any(str(v).startswith("uncached") for v in values)


def publish_card(callback: Callback, trainer: pl.Trainer, resumed: dict[str, Any] | None) -> dict[str, Any]:
    """Build the run's protocol card once the reference is known: warn if a resumed run's differs
    (naming the fields), store it in the history file and send it to every logger as hyperparameters
    (rank 0). A logger that refuses it (MLflow refuses a changed parameter) warns; the run goes on."""
    card = callback.evaluator.card(callback.final_num_samples, callback.final_seeds)
    if callback.final_seeds > 1:
        card["final_statistics"] = {f"final_{s}<key>": what for s, what in SEED_STATISTICS.items()}
    # an uncached reference has no stable identity: check_resumed_reference already says so
    changed = [k for k in card_differences(resumed or {}, card) if not _uncached(k, resumed, card)]
    if resumed is not None and changed:
        rank_zero_warn(
            f"GenerativeMetrics{callback.prefix and f'(prefix={callback.prefix!r})'}: the resumed run's protocol "
            f"card differs in {changed[:8]}{' ...' if len(changed) > 8 else ''}: values before and after the "
            "resume may not be comparable"
        )
    callback.run.history.set_card(card, trainer)
    if trainer.is_global_zero:
        params = {f"{callback.prefix}lightning_fid_card.{k}": v for k, v in flatten(card).items()}
        params = {k: v if isinstance(v, (int, float, bool)) or v is None else str(v) for k, v in params.items()}
        for logger in trainer.loggers:
            try:
                logger.log_hyperparams(params)
            except Exception as exc:  # the card is information; a logger refusing it never ends a run
                rank_zero_warn(f"GenerativeMetrics: {type(logger).__name__} did not take the protocol card ({exc})")
    return card
