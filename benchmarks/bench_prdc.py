"""k-NN metrics vs torch-fidelity's PRC and the prdc package: time, values and memory, same features.

    python benchmarks/bench_prdc.py [--n 10000] [--d 2048] [--repeats 2]   # timing, all in this process
    python benchmarks/bench_prdc.py --large [--n 50000]                   # a measured 50k x 50k run

Features: N real and N generated float32 rows (seeded, identical for every implementation,
non-negative and near a 64-dimensional manifold like network features).

Timing mode runs, interleaved in this one process (best of ``--repeats``):
- ``precision_recall(k=3)`` (float32 screening, the default) and with ``products="float64"``, against
  torch-fidelity's ``prc_features_to_metric`` (k=3, its default ``save_cpu_ram=False``);
- ``precision_recall_density_coverage(k=5)`` against ``prdc.compute_prdc(nearest_k=5)``;
and prints the ratios (their time / ours) and whether the values are equal.

``--large`` runs ``precision_recall(k=3)`` once at N x N in a child process and reports its time and
peak extra resident memory (RSS sampled every 2 ms, minus the RSS once the features exist), next to
the memory torch-fidelity and prdc would need at that N: their N x N allocations read from their code
(the formulas are below), checked against peaks measured at N = 4000 and 8000 (RSS for torch's
allocations, tracemalloc for numpy's; RSS under-counts when freed pages are reused).
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
import tracemalloc

import torch


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def features(n: int, d: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative features near a 64-dimensional manifold (as network features are), the generated
    set slightly wider and shifted: every metric lands well inside (0, 1)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, d, generator=g) / 8
    real = torch.relu(torch.randn(n, 64, generator=g) @ w + 0.1 * torch.randn(n, d, generator=g))
    fake = torch.relu((torch.randn(n, 64, generator=g) * 1.05 + 0.05) @ w + 0.1 * torch.randn(n, d, generator=g))
    return real.to(device), fake.to(device)


def implementations() -> dict:
    """name -> fn(real, fake) -> dict of values; imports happen here, outside any measurement."""
    from prdc import compute_prdc
    from torch_fidelity.metric_prc import prc_features_to_metric

    from lightning_fid.metrics.prdc import precision_recall, precision_recall_density_coverage

    def tf(real, fake):  # torch-fidelity's convention: features_1 generated, features_2 real
        out = prc_features_to_metric(fake, real, prc_neighborhood=3, prc_batch_size=10000, verbose=False)
        return {"precision": out["precision"], "recall": out["recall"]}

    def prdc(real, fake):
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # it prints the set sizes
            out = compute_prdc(real.cpu().numpy(), fake.cpu().numpy(), nearest_k=5)
        return {key: float(value) for key, value in out.items()}

    return {
        "ours pr k=3": lambda r, f: dict(zip(("precision", "recall"), precision_recall(r, f, 3))),
        "ours pr k=3 float64": lambda r, f: dict(
            zip(("precision", "recall"), precision_recall(r, f, 3, products="float64"))
        ),
        "torch-fidelity prc k=3": tf,
        "ours prdc k=5": lambda r, f: precision_recall_density_coverage(r, f, 5),
        "prdc k=5": prdc,
    }


def timing(n: int, d: int, repeats: int) -> None:
    real, fake = features(n, d)
    impls = implementations()
    best: dict[str, float] = {}
    values: dict[str, dict] = {}
    print(f"N={n} d={d}, torch {torch.__version__}, {os.cpu_count()} CPUs; load average before: {_load()}")
    for rep in range(repeats):
        for name, fn in impls.items():
            start = time.perf_counter()
            values[name] = fn(real, fake)
            seconds = time.perf_counter() - start
            best[name] = min(best.get(name, float("inf")), seconds)
            print(f"  run {rep + 1} {name:24s} {seconds:8.2f} s", flush=True)
    print(f"load average after: {_load()}\n")
    for name in impls:
        shown = " ".join(f"{k}={v:.6f}" for k, v in values[name].items())
        print(f"{name:24s} best {best[name]:8.2f} s   {shown}")
    ours, ours64, tf = values["ours pr k=3"], values["ours pr k=3 float64"], values["torch-fidelity prc k=3"]
    counts = {k: (round(ours[k] * n), round(tf[k] * n)) for k in ours}
    print(
        f"\nprecision/recall k=3: torch-fidelity time / ours = x{best['torch-fidelity prc k=3'] / best['ours pr k=3']:.2f}"
        f"  (float64 screening: x{best['torch-fidelity prc k=3'] / best['ours pr k=3 float64']:.2f};"
        f" float32 / float64 screening time: {best['ours pr k=3'] / best['ours pr k=3 float64']:.2f})"
    )
    print(f"  float32 == float64 screening: {ours == ours64}")
    print(
        f"  sample counts ours vs torch-fidelity (it averages 0/1 in float32): {counts}; equal: {all(a == b for a, b in counts.values())}"
    )
    mine, theirs = values["ours prdc k=5"], values["prdc k=5"]
    same = all(mine[k] == theirs[k] for k in ("precision", "recall", "coverage"))
    same = same and abs(mine["density"] - theirs["density"]) <= 1e-12 * abs(theirs["density"])
    print(f"precision/recall/density/coverage k=5: prdc time / ours = x{best['prdc k=5'] / best['ours prdc k=5']:.2f}")
    print(f"  equal values (exact fractions; density to 1e-12, one rounding apart): {same}")


# --- memory at large N --------------------------------------------------------------------------

PEERS = {
    # torch-fidelity 0.4 metric_prc.calculate_precision_recall_full: calc_cdist_full returns the N x N
    # float32 matrix (4 N^2; while torch.cat builds it, its row strips are alive too: 8 N^2), then
    # .kthvalue() on it, whose CPU kernel clones the input (4 N^2) and allocates an int64 index array
    # of the same shape (8 N^2): 16 N^2 bytes. The later dist_2_1 phase needs 4 N^2 + two N^2 masks.
    "torch-fidelity prc (save_cpu_ram=False)": 16,
    # prdc 0.2 compute_nearest_neighbour_distances: sklearn's pairwise_distances fills one N x N float32
    # matrix (4 N^2), then get_kth_value's np.argpartition returns an N x N int64 index array (8 N^2).
    "prdc compute_prdc": 12,
}


def child(name: str, n: int, d: int) -> None:
    """Run one implementation at N and print its time, values and peak extra RSS as JSON."""
    real, fake = features(n, d)
    fn = implementations()[name]
    base, peak, stop = _rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()  # sees numpy's allocations (not torch's)
    start = time.perf_counter()
    values = fn(real, fake)
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    stop.set()
    sampler.join()
    extra = max(peak[0], _rss_mb()) - base
    print(json.dumps({"values": values, "seconds": seconds, "extra_mb": extra, "traced_mb": traced}))


def measure(name: str, n: int, d: int) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--n", str(n), "--d", str(d)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def large(n: int, d: int, check_n: int) -> None:
    print(f"N={n} x {n}, d={d}, precision_recall(k=3), float32 screening; load average before: {_load()}", flush=True)
    ours = measure("ours pr k=3", n, d)
    print(f"load average after: {_load()}")
    if "error" in ours:
        print(f"  ours: {ours['error']}")
        return
    print(
        f"  ours: {ours['seconds']:.0f} s ({ours['seconds'] / 60:.1f} min), peak extra RSS {ours['extra_mb']:.0f} MB"
        f" ({ours['extra_mb'] / 1024:.2f} GiB; target < 1 GiB); precision={ours['values']['precision']:.6f}"
        f" recall={ours['values']['recall']:.6f}"
    )
    print(f"\nWhat the references need at N={n} (their N x N allocations, from their code):")
    for peer, bytes_per_pair in PEERS.items():
        print(f"  {peer}: {bytes_per_pair} N^2 bytes = {bytes_per_pair * n * n / 2**30:.1f} GiB")
    sizes = (check_n, 2 * check_n)
    print(f"Check of those formulas at N={sizes[0]} and {sizes[1]} (child processes): bytes per N^2 fitted as")
    print("(peak2 - peak1) / (N2^2 - N1^2), from the peak extra RSS and from tracemalloc (numpy's allocations only):")
    for peer, impl in (
        ("torch-fidelity prc (save_cpu_ram=False)", "torch-fidelity prc k=3"),
        ("prdc compute_prdc", "prdc k=5"),
    ):
        runs = [measure(impl, m, d) for m in sizes]
        if any("error" in r for r in runs):
            print(f"  {peer}: {[r.get('error') for r in runs]}")
            continue
        fit = {
            key: (runs[1][key] - runs[0][key]) * 2**20 / (sizes[1] ** 2 - sizes[0] ** 2)
            for key in ("extra_mb", "traced_mb")
        }
        print(
            f"  {peer}: RSS peaks {runs[0]['extra_mb']:.0f} / {runs[1]['extra_mb']:.0f} MB -> {fit['extra_mb']:.1f};"
            f" tracemalloc {runs[0]['traced_mb']:.0f} / {runs[1]['traced_mb']:.0f} MB -> {fit['traced_mb']:.1f}"
            f" (formula {PEERS[peer]})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--large", action="store_true", help="measured run at --n (default 50000); minutes")
    parser.add_argument("--check-n", type=int, default=4000, help="--large checks the peers' formulas at N and 2N")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.n, args.d)
    if args.large:
        return large(args.n or 50_000, args.d, args.check_n)
    timing(args.n or 10_000, args.d, args.repeats)


if __name__ == "__main__":
    main()
