"""Are the error bars right? The estimated standard error against the spread over independent draws.

    nice -n 10 python benchmarks/calibration.py [--metrics fid,kid,cmmd,precision,recall]
        [--dists gauss,mixture] [--dims 64,2048] [--sizes 500,2000,10000] [--seeds 50]
        [--out results.jsonl] [--callback] [--table results.jsonl]

For each cell (metric, feature distribution, N generated samples, d dimensions) the reference set
(10 000 samples) is drawn once and each metric's reference-side work done once; then ``--seeds``
independent generated sets are drawn, each scored through the metric objects (``Metric.compute`` with
``Context(groups=10)``, the path the callback takes), which return the value and its jackknife
replicates. The table compares the root-mean-square estimated SE with the empirical standard
deviation of the value over the seeds: ``ratio = RMS(SE) / SD``, target [0.8, 1.25], with the 95 %
interval of the ratio from the chi-square distribution of the empirical SD.

Feature distributions (cheap to draw at d = 2048):
- ``gauss``: reference N(0, diag(l)), l_i = (1 + i)^-0.8 (a decaying spectrum, as image embeddings
  have); generated: per-dimension scale 0.75..1.25 and a mean shift of 0.25 sqrt(l_i).
- ``mixture`` (non-Gaussian): relu(c_k + z) sqrt(l) with 10 fixed cluster centres c_k; the reference draws
  the clusters uniformly, the generated set with weights 0.75^k (under-represented modes) and z scaled
  by 0.9: skewed, sparse, multimodal features with precision and recall below 1.
CMMD reads the features L2-normalised (its CLIP embeddings are unit vectors).

``--callback`` scores a small generator network through ``GenerativeMetrics`` (sampling, uint8
quantisation, a small random encoder, group moments, merge, scoring) with noise seeds 0..seeds-1
(``--seed-offset``: from another seed); the
reference images come from a nearby generator (weights x 1.3 plus 5 % noise, bias + 0.1) plus pixel noise.

Each row is appended to ``--out`` as JSON as soon as it is done, so cells can be run apart;
``--table FILE [FILE ...]`` prints the table of results files (``--pivot``: README's layout, a later
file's cell replacing an earlier one's).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import chi2

from lightning_fid.engine._accumulators import FeatureMoments, GroupMoments
from lightning_fid.engine._stats import Statistics
from lightning_fid.metrics import CMMD, FID, KID, PrecisionRecall
from lightning_fid.metrics._jackknife import DEFAULT_GROUPS, Estimate
from lightning_fid.metrics.base import Context

N_REAL = 10_000


class Features:
    """A reference and a generated feature distribution (see the module docstring)."""

    def __init__(self, kind: str, d: int, seed: int = 12345) -> None:
        self.kind, self.d = kind, d
        self.scale = (1.0 + torch.arange(d, dtype=torch.float64)) ** -0.4  # sqrt of the spectrum
        g = torch.Generator().manual_seed(seed)
        self.centres = 1.5 * torch.randn(10, d, generator=g, dtype=torch.float64)
        self.weights = 0.75 ** torch.arange(10, dtype=torch.float64)

    def draw(self, n: int, fake: bool, g: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.d, generator=g, dtype=torch.float64)
        if self.kind == "gauss":
            if fake:
                z = z * (1 + 0.25 * torch.linspace(-1, 1, self.d, dtype=torch.float64)) + 0.25
            return (z * self.scale).float()
        probs = self.weights if fake else torch.ones(10, dtype=torch.float64)
        k = torch.multinomial(probs, n, replacement=True, generator=g)
        x = torch.relu(self.centres[k] + (0.9 if fake else 1.0) * z)
        return (x * self.scale).float()


def statistics(x: torch.Tensor, groups: int, batch: int = 1000) -> Statistics:
    """Moments, per-group moments and the kept rows, accumulated batch by batch as the callback does."""
    total, grouped = FeatureMoments(x.shape[1]), GroupMoments(x.shape[1], groups)
    for s in range(0, x.shape[0], batch):
        total.update(x[s : s + batch])
        grouped.update(x[s : s + batch], torch.arange(s, min(s + batch, x.shape[0])))
    stats = total.statistics()
    stats.features, stats.group_moments = x, tuple(grouped.tensors())
    return stats


def make_metrics(names: list[str], n: int) -> dict[str, tuple]:
    """metric objects by the name of the value to calibrate (precision and recall share one object)."""
    out: dict[str, tuple] = {}
    if "fid" in names:
        out["fid"] = (FID(), False)
    if "kid" in names:
        out["kid"] = (KID(subset_size=min(1000, n)), False)
    if "cmmd" in names:
        out["cmmd"] = (CMMD(), True)
    pr = PrecisionRecall(k=3)
    for name in ("precision", "recall"):
        if name in names:
            out[name] = (pr, False)
    return out


def normalised(stats: Statistics) -> Statistics:
    f = torch.nn.functional.normalize(stats.features, dim=1)
    return Statistics(n=stats.n, features=f)


def run_cell(kind: str, d: int, n: int, names: list[str], seeds: int, groups: int) -> list[dict]:
    """Every metric of one (distribution, d, N) cell over ``seeds`` generated draws."""
    feats = Features(kind, d)
    real = statistics(feats.draw(N_REAL, False, torch.Generator().manual_seed(7)), 1)
    real.group_moments = None
    real_unit = normalised(real)
    metrics = make_metrics(names, n)
    contexts = {id(m): Context(seed=0, groups=groups) for m, _ in metrics.values()}
    for metric, unit in metrics.values():
        metric.prepare(real_unit if unit else real, contexts[id(metric)])
    values: dict[str, list[float]] = {k: [] for k in metrics}
    ses: dict[str, list[float]] = {k: [] for k in metrics}
    seconds = {k: 0.0 for k in metrics}
    for seed in range(seeds):
        fake = statistics(feats.draw(n, True, torch.Generator().manual_seed(1000 + seed)), groups)
        fake_unit = normalised(fake) if any(unit for _, unit in metrics.values()) else None
        done: dict[int, dict] = {}
        for key, (metric, unit) in metrics.items():
            if id(metric) not in done:
                ctx = contexts[id(metric)]
                ctx.shared = {}
                t0 = time.perf_counter()
                done[id(metric)] = metric.compute(real_unit if unit else real, fake_unit if unit else fake, ctx)
                seconds[key] += time.perf_counter() - t0
            result = done[id(metric)][key]
            if not isinstance(result, Estimate):
                raise SystemExit(f"{key} returned no replicates: it has no error bars yet")
            values[key].append(result.value)
            ses[key].append(result.se)
    return [row(f"{kind}", key, n, d, values[key], ses[key], seconds[key]) for key in metrics]


def row(source: str, key: str, n: int, d: int, values: list[float], ses: list[float], seconds: float) -> dict:
    v, s = np.asarray(values), np.asarray(ses)
    return {
        "source": source,
        "metric": key,
        "n": n,
        "d": d,
        "seeds": len(v),
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)),
        "rms_se": float(np.sqrt(np.mean(s**2))),
        "seconds": seconds,
    }


def callback_cells(sizes: list[int], seeds: int, names: list[str], groups: int, offset: int = 0) -> list[dict]:
    """A small generator scored through GenerativeMetrics' evaluator with noise seeds offset ..
    offset + seeds - 1."""
    from torch import nn
    from torch.utils.data import TensorDataset

    from lightning_fid import GenerativeMetrics

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 64), nn.ReLU())

    class Unit(nn.Module):  # unit-norm embeddings, as CLIP's
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(x, dim=1)

    unit = nn.Sequential(encoder, nn.Linear(64, 32), Unit())
    generator = nn.Sequential(nn.Linear(16, 3 * 16 * 16), nn.Tanh(), nn.Unflatten(1, (3, 16, 16)))
    truth = nn.Linear(16, 3 * 16 * 16)  # the data: a nearby generator, plus pixel noise
    with torch.no_grad():
        truth.weight.copy_(generator[0].weight * 1.3 + 0.05 * torch.randn(truth.weight.shape))
        truth.bias.copy_(generator[0].bias + 0.1)
        g = torch.Generator().manual_seed(3)
        noise = 0.05 * torch.randn(N_REAL, 3 * 16 * 16, generator=g)
        real = torch.tanh(truth(torch.randn(N_REAL, 16, generator=g)) + noise).view(-1, 3, 16, 16)

    def sample(module, batch_size, g):
        return module(torch.randn(batch_size, 16, generator=g))

    rows = []
    for n in sizes:
        metrics = [m for name, (m, _) in make_metrics([x for x in names if x != "cmmd"], n).items()]
        metrics = list(dict.fromkeys(metrics)) + ([CMMD(extractor=unit)] if "cmmd" in names else [])
        cb = GenerativeMetrics(
            real=TensorDataset(real),
            sample_fn=sample,
            metrics=metrics,
            feature_extractor=encoder,
            num_samples=n,
            batch_size=500,
            use_cache=False,
            progress=False,
            log_images=0,
            error_bars=groups,
        )
        runs = [cb.evaluator.evaluate(generator, seed=offset + s)[0] for s in range(seeds)]
        for key in [k for k in names if k in runs[0]]:
            values = [r[key] for r in runs]
            ses = [r[key + "_se"] for r in runs]
            rows.append(row("callback", key, n, 64, values, ses, 0.0))
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        f"{'metric':<10} {'features':<9} {'N':>6} {'d':>5} {'seeds':>5} {'mean':>10} {'SD':>10} "
        f"{'RMS(SE)':>10} {'ratio':>6} {'95% CI':>13}  ok"
    ]
    for r in sorted(rows, key=lambda r: (r["metric"], r["source"], r["d"], r["n"])):
        ratio = r["rms_se"] / r["sd"] if r["sd"] > 0 else math.nan
        k = r["seeds"] - 1
        lo, hi = ratio * math.sqrt(chi2.ppf(0.025, k) / k), ratio * math.sqrt(chi2.ppf(0.975, k) / k)
        ok = "yes" if 0.8 <= ratio <= 1.25 else "NO"
        lines.append(
            f"{r['metric']:<10} {r['source']:<9} {r['n']:>6} {r['d']:>5} {r['seeds']:>5} {r['mean']:>10.4g} "
            f"{r['sd']:>10.3g} {r['rms_se']:>10.3g} {ratio:>6.3f} {f'[{lo:.2f}, {hi:.2f}]':>13}  {ok}"
        )
    return "\n".join(lines)


def pivot(rows: list[dict]) -> str:
    """A markdown table of the ratios: one row per (features, d, N), one column per metric; a later row
    of the same cell replaces an earlier one (results files given in order)."""
    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        cells.setdefault((r["source"], r["d"], r["n"]), {})[r["metric"]] = r
    metrics = ["fid", "kid", "cmmd", "precision", "recall"]
    lines = [
        "| features | d | N | seeds | " + " | ".join(metrics) + " |",
        "|---|---:|---:|---|" + "---:|" * len(metrics),
    ]
    for (source, d, n), found in sorted(cells.items(), key=lambda c: (c[0][0] == "callback", c[0])):
        out = []
        for m in metrics:
            r = found.get(m)
            ratio = r["rms_se"] / r["sd"] if r and r["sd"] > 0 else math.nan
            if r is not None and r["sd"] == 0 and r["mean"] == 0:
                out.append("(all 0)")  # nothing varied: no ratio
            else:
                out.append("—" if r is None else f"{ratio:.2f}" + ("" if 0.8 <= ratio <= 1.25 else " ✗"))
        seeds = "/".join(str(s) for s in sorted({r["seeds"] for r in found.values()}, reverse=True))
        lines.append(f"| {source} | {d} | {n} | {seeds} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", default="fid,kid,cmmd,precision,recall")
    parser.add_argument("--dists", default="gauss,mixture")
    parser.add_argument("--dims", default="64,2048")
    parser.add_argument("--sizes", default="500,2000,10000")
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--groups", type=int, default=DEFAULT_GROUPS)
    parser.add_argument("--callback", action="store_true", help="the small generator through GenerativeMetrics")
    parser.add_argument("--seed-offset", type=int, default=0, help="--callback: noise seeds from this one")
    parser.add_argument("--out", default="calibration.jsonl")
    parser.add_argument("--table", nargs="+", default=None, help="print the table of these results files and exit")
    parser.add_argument("--pivot", action="store_true", help="with --table: one markdown row per cell (README's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: best on a shared machine)")
    args = parser.parse_args()
    if args.table:
        rows = [json.loads(line) for f in args.table for line in Path(f).read_text().splitlines() if line.strip()]
        print(pivot(rows) if args.pivot else table(rows))
        return
    torch.set_num_threads(args.threads)
    names = args.metrics.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with open(args.out, "a") as out:
        if args.callback:
            cells = callback_cells(sizes, args.seeds, names, args.groups, args.seed_offset)
            rows += cells
            out.write("".join(json.dumps(r) + "\n" for r in cells))
        else:
            for d in (int(x) for x in args.dims.split(",")):
                for kind in args.dists.split(","):
                    for n in sizes:
                        t0 = time.perf_counter()
                        cells = run_cell(kind, d, n, names, args.seeds, args.groups)
                        rows += cells
                        out.write("".join(json.dumps(r) + "\n" for r in cells))
                        out.flush()
                        print(f"# {kind} d={d} N={n}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
