"""Early stopping and checkpoint choice on a synthetic run whose true quality plateaus: the plain rules
against the noise-aware ones, over many seeds.

    nice -n 10 python benchmarks/noise_aware_stopping.py [--seeds 20] [--plateau 5] [--extra 15]
        [--patience 3,5] [--num-samples 400]

The run (``tests/helpers/plateau.py``): the generated distribution approaches a fixed distance from the
reference for ``--plateau`` epochs, then stays there while every sample keeps changing (a new random
rotation of the latent each epoch), as a GAN's outputs keep moving on a plateau. Each seed trains
``plateau + extra`` epochs with ``GenerativeMetrics(metrics=["fid"])`` and records every evaluation's
FID and jackknife replicates. On those evaluations the script applies:

- plain ``EarlyStopping(patience)``: stop after ``patience`` evaluations without a new minimum;
- noise-aware (``FreshEarlyStopping(noise_aware=True)``): stop after ``patience`` evaluations that do not
  beat the last improvement by 2 paired standard errors (the function the callback uses);
- plain ``ModelCheckpoint(save_top_k=1)``: the evaluation with the smallest FID;
- ``NoiseAwareCheckpoint``: the last evaluation that beat the kept one by 2 paired standard errors;

and re-scores each chosen checkpoint on other noise (seed 1000): the logged FID of the plain choice is
biased low by the selection (the winner's curse), the re-scored one is not.
The true FID is the same for every evaluation from epoch ``plateau`` on.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.plateau import PlateauGenerator, plain_stop, plateau_run  # noqa: E402

from lightning_fid.callbacks._checkpoint import significant  # noqa: E402


class Recorder(pl.Callback):
    """Each evaluation's estimates, read right after GenerativeMetrics (earlier in the list) recorded it."""

    def __init__(self) -> None:
        self.estimates: list = []
        self.seen = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = next(c for c in trainer.callbacks if hasattr(c, "evaluator")).run
        if run.last_evaluated != self.seen:
            self.seen = run.last_evaluated
            self.estimates.append(run.estimates["fid"])


def noise_aware(estimates: list, patience: int, z: float = 2.0) -> tuple[int | None, int]:
    """(stop evaluation or None, kept evaluation) of the noise-aware rules on these estimates."""
    anchor, kept, wait, stop = None, 0, 0, None
    for i, e in enumerate(estimates):
        if significant(e, anchor, "min", z):
            anchor, kept, wait = e, i, 0
        else:
            wait += 1
            if stop is None and wait >= patience:
                stop = i
    return stop, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--plateau", type=int, default=5)
    parser.add_argument("--extra", type=int, default=15)
    parser.add_argument("--patience", default="3,5")
    parser.add_argument("--num-samples", type=int, default=400)
    args = parser.parse_args()
    patiences = [int(p) for p in args.patience.split(",")]
    rows = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            recorder = Recorder()
            epochs = args.plateau + args.extra
            metrics = plateau_run(Path(tmp), [recorder], seed, args.plateau, epochs, args.num_samples)
        fids = [h["fid"] for h in metrics.history]
        row = {"seed": seed}
        for p in patiences:
            row[f"plain_stop_p{p}"] = plain_stop(fids, p)
            row[f"noise_stop_p{p}"] = noise_aware(recorder.estimates, p)[0]
        plain_pick, noise_pick = int(np.argmin(fids)), noise_aware(recorder.estimates, 10**9)[1]
        model = PlateauGenerator(args.plateau, seed)
        for name, pick in (("plain", plain_pick), ("noise", noise_pick)):
            model.epoch = pick
            fresh, _ = metrics.evaluator.evaluate(model, seed=1000)
            row[f"{name}_pick"], row[f"{name}_logged"], row[f"{name}_fresh"] = pick, fids[pick], fresh["fid"]
        rows.append(row)
        print(row, flush=True)
    summary(rows, patiences, args.plateau)


def summary(rows: list[dict], patiences: list[int], plateau: int) -> None:
    def stat(key: str) -> str:
        v = [np.inf if r[key] is None else r[key] for r in rows]
        never = sum(np.isinf(v))
        finite = [x for x in v if np.isfinite(x)]
        med = np.median(v) if never <= len(v) / 2 else np.inf
        return f"median {med:g}, mean {np.mean(finite):.1f} (of {len(finite)} that stopped), never {never}"

    print(f"\n{len(rows)} seeds; the plateau starts at evaluation {plateau} (epochs counted from 0)")
    for p in patiences:
        ideal = plateau + p
        print(f"patience {p} (ideal stop: evaluation {ideal}):")
        for rule, name in (("plain", "EarlyStopping"), ("noise", "noise-aware")):
            key = f"{rule}_stop_p{p}"
            within = sum(r[key] is not None and r[key] <= ideal for r in rows)
            print(f"  {name:>13} stops at: {stat(key)}; within patience of the plateau: {within}/{len(rows)}")
    for rule in ("plain", "noise"):
        picks = [r[f"{rule}_pick"] for r in rows]
        logged = np.mean([r[f"{rule}_logged"] for r in rows])
        fresh = np.mean([r[f"{rule}_fresh"] for r in rows])
        print(
            f"checkpoint ({rule}): picks evaluation median {np.median(picks):g} (range {min(picks)}..{max(picks)}); "
            f"mean logged FID {logged:.4f}, mean FID re-scored on other noise {fresh:.4f}"
        )


if __name__ == "__main__":
    main()
