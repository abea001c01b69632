"""k-NN metrics: time and peak extra memory vs torch-fidelity's PRC and the prdc package, same features.

    python benchmarks/bench_prdc.py [--n 2500,5000,10000] [--d 2048] [--budget-gb 8] [--device cpu|cuda]

Each run is a child process given N real and N generated float32 features (seeded, identical for
every implementation, non-negative and near a low-dimensional manifold like network features). Peak extra memory = peak RSS (sampled every 2 ms) minus the RSS
once the features exist. Pairs compared on the same values:

- ``precision_recall_density_coverage(k=5)`` vs ``prdc.compute_prdc(k=5)`` (all four metrics);
- ``precision_recall(k=3)`` vs torch-fidelity's ``prc_features_to_metric`` (k=3, its default
  ``save_cpu_ram=False``: full N x N matrices).

A reference run is skipped when the fit of its smaller runs predicts more than ``--budget-gb``. The
last table extrapolates each implementation to 50,000 x 50,000: memory as a + b N^2 fitted to the
references' runs; ours holds block_size^2 buffers (bounded once N >= block_size) plus ~(k + 4) float64
per sample; time as c N^2 from the largest run (all are O(N^2 d) arithmetic).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import torch

PAIRS = {"prdc": ("ours-prdc", "prdc"), "prc": ("ours-pr3", "torch-fidelity")}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _features(n: int, d: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative features near a 64-dimensional manifold (as network features are), the generated
    set slightly wider and shifted: every metric lands well inside (0, 1)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, d, generator=g) / 8
    real = torch.relu(torch.randn(n, 64, generator=g) @ w + 0.1 * torch.randn(n, d, generator=g))
    fake = torch.relu((torch.randn(n, 64, generator=g) * 1.05 + 0.05) @ w + 0.1 * torch.randn(n, d, generator=g))
    return real.to(device), fake.to(device)


def _load(impl: str):
    """The implementation as fn(real, fake) -> values; imports happen here, outside the measurement."""
    if impl == "ours-prdc":
        from lightning_fid.metrics.prdc import precision_recall_density_coverage

        return lambda real, fake: precision_recall_density_coverage(real, fake, k=5)
    if impl == "ours-pr3":
        from lightning_fid.metrics.prdc import precision_recall

        return lambda real, fake: dict(zip(("precision", "recall"), precision_recall(real, fake, k=3)))
    if impl == "prdc":
        from prdc import compute_prdc

        def run(real, fake):
            out = compute_prdc(real.cpu().numpy(), fake.cpu().numpy(), nearest_k=5)
            return {key: float(value) for key, value in out.items()}

        return run
    from torch_fidelity.metric_prc import prc_features_to_metric

    def run_tf(real, fake):  # torch-fidelity's convention: features_1 generated, features_2 real
        out = prc_features_to_metric(fake, real, prc_neighborhood=3, prc_batch_size=10000, verbose=False)
        return {"precision": out["precision"], "recall": out["recall"]}

    return run_tf


def child(impl: str, n: int, d: int, device: str) -> None:
    run = _load(impl)
    real, fake = _features(n, d, device)
    base, peak, stop = _rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # prdc prints its set sizes
        values = run(real, fake)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    print(json.dumps({"values": values, "seconds": seconds, "extra_mb": peak[0] - base, "gpu_mb": gpu}))


def measure(impl: str, n: int, d: int, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--n", str(n), "--d", str(d), "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit(ns: list[int], ys: list[float], power: int) -> tuple[float, float]:
    """Least-squares a, b of y = a + b n^power (b only when there is one point)."""
    x = np.asarray(ns, dtype=np.float64) ** power
    y = np.asarray(ys, dtype=np.float64)
    if len(x) < 2:
        return 0.0, float(y[0] / x[0])
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="2500,5000,10000")
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--budget-gb", type=float, default=8.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, int(args.n), args.d, args.device)
    ns = [int(v) for v in args.n.split(",")]
    budget_mb = args.budget_gb * 1024
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {torch.get_num_threads()}, d={args.d}, {args.device}"
    )
    results: dict[str, dict[int, dict]] = {}
    for n in ns:
        for ours, theirs in PAIRS.values():
            for impl in (ours, theirs):
                runs = results.setdefault(impl, {})
                done = [m for m in runs if "extra_mb" in runs[m]]
                a, b = fit(done, [runs[m]["extra_mb"] for m in done], 2) if done else (0.0, 0.0)
                if impl == theirs and done and a + b * n * n > budget_mb:
                    runs[n] = {"error": f"skipped: predicted {(a + b * n * n) / 1024:.1f} GiB > budget"}
                else:
                    runs[n] = measure(impl, n, args.d, args.device)
                r = runs[n]
                if "error" in r:
                    print(f"N={n:>6} {impl:>15}: {r['error']}")
                    continue
                vals = " ".join(f"{k}={v:.6f}" for k, v in r["values"].items())
                gpu = f", GPU peak {r['gpu_mb']:.0f} MB" if r["gpu_mb"] is not None else ""
                print(
                    f"N={n:>6} {impl:>15}: {r['seconds']:8.1f} s, peak extra RSS {r['extra_mb']:8.0f} MB{gpu}  {vals}"
                )
        for ours, theirs in PAIRS.values():
            a, b = results[ours][n], results[theirs][n]
            if "error" not in a and "error" not in b:
                same = all(abs(a["values"][k] - b["values"][k]) <= 1e-6 for k in b["values"])
                print(
                    f"  {ours} vs {theirs}: time x{b['seconds'] / a['seconds']:.2f}, memory "
                    f"x{b['extra_mb'] / max(a['extra_mb'], 1.0):.1f} (>1: ours better); same values: {same}"
                )
    target = 50_000
    print(f"\nExtrapolated to {target:,} x {target:,} at d={args.d} (fits of the runs above):")
    for impl, runs in results.items():
        done = sorted(m for m in runs if "extra_mb" in runs[m])
        if not done:
            continue
        largest = done[-1]
        if impl.startswith("ours"):  # block_size^2 buffers plus ~(k + 4) float64 per sample: linear in N
            a, b = runs[largest]["extra_mb"], 0.0
            mem = a + (target - largest) * 9 * 8 / 2**20
        else:
            a, b = fit(done, [runs[m]["extra_mb"] for m in done], 2)
            mem = a + b * target**2
        secs = runs[largest]["seconds"] * (target / largest) ** 2
        fits = "fits" if mem <= budget_mb else "does NOT fit"
        line = f"  {impl:>15}: ~{mem / 1024:7.1f} GiB extra ({fits} in {args.budget_gb:g} GiB), ~{secs / 60:6.1f} min"
        if not impl.startswith("ours") and b > 0:
            line += f"; largest N within budget ~{int(((budget_mb - a) / b) ** 0.5):,}"
        print(line)


if __name__ == "__main__":
    main()
