"""What error bars cost: one evaluation with and without them, side by side (the issue's budget: at
most 10 % of an evaluation's time, O(G d^2) extra float64 memory for d-dimensional Fréchet metrics).

    nice -n 10 python benchmarks/bench_error_bars.py [--metrics fid,kid,precision,recall,cmmd]
        [--num-samples 10000] [--dim 2048] [--repeats 3] [--inception 0] [--inception-only]

Each configuration runs in its own child process (so peak memory is its own), alternating with and
without error bars ``--repeats`` times; the run with the least CPU time of each is kept (on a shared
machine wall time mostly measures the other jobs; with OMP_NUM_THREADS=1 CPU time is the compute). The generator is a small
network drawing 32 x 32 images; the encoder a fixed random projection of the images to
``--dim`` features (cheap, so the metrics' share of the evaluation, and with it the relative cost of
the error bars, is as large as it gets: with Inception-v3 extraction dominates). ``--inception N``
adds a run with Inception-v3 (random weights in the published format) on N samples.

Prints, per configuration: evaluation CPU and wall seconds and peak resident memory with and without error bars,
their ratio and difference, and the error-bar memory the Fréchet metrics need by formula,
G (d^2 + d + 1) float64 values per generated set.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch
from torch import nn
from torch.utils.data import TensorDataset
sys.path.insert(0, {tests!r})
from lightning_fid.engine import Evaluator
from lightning_fid.metrics import CMMD, KID
cfg = json.loads({cfg!r})
torch.manual_seed(0)
d, n = cfg["dim"], cfg["num_samples"]

class Projection(nn.Module):
    name, feature_dim, input_range = "projection", d, (0.0, 1.0)
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3 * 32 * 32, d) / 32, requires_grad=False)
    def forward(self, x):  # full rank: a covariance of rank < d makes FID's last digits rounding noise
        return torch.relu((x.flatten(1) - 0.5) @ self.w)

class Unit(Projection):
    name = "unit-projection"
    def forward(self, x):
        return nn.functional.normalize(super().forward(x), dim=1)

names = cfg["metrics"]
metrics = [m for m in names if m not in ("kid", "cmmd")]
if "kid" in names:
    metrics.append(KID(subset_size=min(1000, n)))
if "cmmd" in names:
    metrics.append(CMMD(extractor=Unit()))
extractor = Projection()
if cfg["inception"]:
    from helpers.weights import write_random_inception
    from lightning_fid.extractors import InceptionV3
    extractor = InceptionV3(write_random_inception(cfg["tmp"] + "/inception.pth"))
generator = nn.Sequential(nn.Linear(64, 3 * 32 * 32), nn.Tanh(), nn.Unflatten(1, (3, 32, 32)))
with torch.no_grad():  # real images: the same kind of generator, a little off (precision and recall near 0.5)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, 64, generator=g) * 1.2
    real = torch.tanh(generator[0](z) + 0.1 * torch.randn(n, 3 * 32 * 32, generator=g)).view(n, 3, 32, 32)
ev = Evaluator(TensorDataset(real), metrics, feature_extractor=extractor, num_samples=n, batch_size=250,
               sample_fn=lambda m, b, g: m(torch.randn(b, 64, generator=g)), progress=False,
               error_bars=cfg["error_bars"])
ev.prepare(generator)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
values, _ = ev.evaluate(generator)
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": seconds, "cpu": cpu, "peak_kib": peak, "before_kib": base, "values": values}}))
"""


def child(cfg: dict) -> dict:
    code = CHILD.format(tests=str(Path(__file__).resolve().parents[1] / "tests"), cfg=json.dumps(cfg))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(cfg: dict, repeats: int) -> None:
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for _ in range(repeats):
        for on in (False, True):
            runs[on].append(child({**cfg, "error_bars": on}))
    best = {on: min(r, key=lambda x: x["cpu"]) for on, r in runs.items()}
    peak = {on: max(x["peak_kib"] for x in r) / 2**20 for on, r in runs.items()}
    groups, d = 10, cfg["dim"]
    fd = sum(m in ("fid", "fd_dinov2") for m in cfg["metrics"])
    formula = fd * groups * (d * d + d + 1) * 8 / 2**30
    label = f"{','.join(cfg['metrics'])} N={cfg['num_samples']} d={d}" + (" Inception-v3" if cfg["inception"] else "")
    print(f"\n{label}")
    for what, name in (("cpu", "CPU seconds"), ("seconds", "wall seconds")):
        a, b = best[False][what], best[True][what]
        print(f"  {name:<19} without {a:8.2f}   with {b:8.2f}   ratio {b / a:.3f}")
    print(
        f"  peak RSS GiB        without {peak[False]:8.2f}   with {peak[True]:8.2f}   "
        f"extra {peak[True] - peak[False]:.2f} (formula G(d^2+d+1) x 8 B per Fréchet metric: {formula:.2f})"
    )
    shown = {k: round(v, 6) for k, v in best[True]["values"].items()}
    print(f"  values with error bars: {shown}")
    apart = max(abs(best[True]["values"][k] / v - 1) if v else 0.0 for k, v in best[False]["values"].items())
    print(f"  values without error bars: largest relative difference {apart:.1e} (float64 rounding)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", default="fid,kid,precision,recall,cmmd")
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inception", type=int, default=0, help="also time Inception-v3 extraction on N samples")
    parser.add_argument("--inception-only", action="store_true", help="only the Inception-v3 configuration")
    parser.add_argument("--tmp", default="/tmp")
    args = parser.parse_args()
    print(f"machine: {resource.getpagesize()} B pages; child processes timed one at a time ({time.ctime()})")
    base = {"dim": args.dim, "num_samples": args.num_samples, "inception": False, "tmp": args.tmp}
    if not args.inception_only:
        compare({**base, "metrics": ["fid"]}, args.repeats)
        compare({**base, "metrics": args.metrics.split(",")}, args.repeats)
    if args.inception:
        cfg = {**base, "metrics": args.metrics.split(","), "num_samples": args.inception, "inception": True}
        compare(cfg, args.repeats)


if __name__ == "__main__":
    main()
