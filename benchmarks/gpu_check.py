"""One command for a lent GPU: k-NN metrics and FID at 10k / 50k, extraction throughput, budget share.

    python benchmarks/gpu_check.py                 # on the GPU (a few minutes on one H100)
    python benchmarks/gpu_check.py --smoke         # reduced sizes on the CPU: checks the script runs

Prints, on one device:
1. the device's measured float32 (IEEE, TF32 off) and float64 matmul rates and their ratio (GeForce
   RTX 30/40 cards: 1/32 to 1/64 by specification; data-centre cards: 1/2 or 1);
2. per N in --n (10000, 50000; d = 2048): precision / recall (k=3) screened with float32 products
   (the default) and with float64 products, equal values asserted; FID per evaluation (float64
   moments accumulated from N features in batches, and the Fréchet distance against a cached
   reference factor), with the time a float32 accumulation would take beside it;
3. extraction throughput: lightning_fid's path (float images -> uint8 -> frozen Inception) against
   torch-fidelity's bare extractor on the same uint8 batches (random weights in the published
   format, written locally: no download);
4. the evaluation's share of a training-step budget: extraction of N samples plus the metrics above,
   against ``--every`` training steps of ``--step-seconds`` each (sampling the generator is not
   included: it depends on the model).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int = 1):
    """(best seconds, last result) over ``repeats`` runs after one warm-up run."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def matmul_rates(device: torch.device, size: int) -> tuple[float, float]:
    """Measured TFLOP/s of an IEEE float32 and a float64 size x size matmul."""
    from lightning_fid.metrics._blocks import ieee_float32

    rates = []
    for dtype in (torch.float32, torch.float64):
        a = torch.rand(size, size, device=device, dtype=dtype)
        with ieee_float32(device):
            seconds, _ = timed(lambda a=a: a @ a, device, repeats=3)
        rates.append(2 * size**3 / seconds / 1e12)
    return rates[0], rates[1]


def features(n: int, d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative features near a 64-dimensional manifold (as in bench_prdc.py), made on the device."""
    g = torch.Generator(device=device).manual_seed(0)
    w = torch.randn(64, d, generator=g, device=device) / 8
    noise = lambda: 0.1 * torch.randn(n, d, generator=g, device=device)  # noqa: E731
    real = torch.relu(torch.randn(n, 64, generator=g, device=device) @ w + noise())
    fake = torch.relu((torch.randn(n, 64, generator=g, device=device) * 1.05 + 0.05) @ w + noise())
    return real, fake


def knn_and_fid(n: int, d: int, device: torch.device, batch: int) -> dict[str, float]:
    from lightning_fid.engine._accumulators import FeatureMoments
    from lightning_fid.metrics import frechet_distance, precision_recall, reference_factor

    real, fake = features(n, d, device)
    t32, v32 = timed(lambda: precision_recall(real, fake, 3), device)
    t64, v64 = timed(lambda: precision_recall(real, fake, 3, products="float64"), device)
    assert v32 == v64, (v32, v64)
    ref = FeatureMoments(d, device).update(real)
    factor = reference_factor(ref.cov)

    def fid() -> float:
        moments = FeatureMoments(d, device)
        for s in range(0, n, batch):
            moments.update(fake[s : s + batch])
        return frechet_distance(ref.mean, ref.cov, moments.mean, moments.cov, sigma1_sqrt=factor)

    def moments32() -> torch.Tensor:  # what a float32 accumulation would cost (not what we compute)
        outer = torch.zeros(d, d, device=device)
        for s in range(0, n, batch):
            outer.addmm_(fake[s : s + batch].T, fake[s : s + batch])
        return outer

    t_fid, value = timed(fid, device)
    t_m32, _ = timed(moments32, device)
    print(
        f"N={n:>6} d={d}: precision/recall k=3 float32 screening {t32:7.2f} s, float64 screening {t64:7.2f} s"
        f" (x{t64 / t32:.1f}); values {v32} equal"
    )
    print(
        f"          FID per evaluation (float64 moments + Fréchet) {t_fid:7.2f} s = {value:.4f}; float32 moments alone {t_m32:.3f} s"
    )
    return {"pr32": t32, "pr64": t64, "fid": t_fid}


def extraction(device: torch.device, batch: int, batches: int, size: int) -> tuple[float, float]:
    """Images per second: ours (to_uint8 + frozen extractor) and torch-fidelity's bare extractor."""
    from helpers.weights import write_random_inception

    from lightning_fid.engine._images import to_uint8
    from lightning_fid.extractors import Frozen, InceptionV3, run_extractor

    path = write_random_inception(Path(tempfile.mkdtemp()) / "weights-inception-2015-12-05-6726825d.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inception = InceptionV3(path).to(device)
    ours, bare = Frozen(inception), inception.net
    g = torch.Generator(device=device).manual_seed(0)
    images = [torch.rand(batch, 3, size, size, generator=g, device=device) * 2 - 1 for _ in range(batches)]
    uint8 = [to_uint8(b) for b in images]
    with torch.no_grad():
        t_bare, _ = timed(lambda: [bare(u)[0] for u in uint8], device)
        t_ours, _ = timed(lambda: [run_extractor(ours, to_uint8(b), "uint8") for b in images], device)
    n = batch * batches
    return n / t_ours, n / t_bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="small sizes on the CPU, to check the script runs")
    parser.add_argument("--n", default=None, help="comma-separated sample counts (default 10000,50000)")
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--step-seconds", type=float, default=0.25, help="one training step's time")
    parser.add_argument("--every", type=int, default=5000, help="training steps between evaluations")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    ns = [int(v) for v in (args.n or ("600,1200" if args.smoke else "10000,50000")).split(",")]
    d = 256 if args.smoke else args.d
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}{' (smoke: reduced sizes)' if args.smoke else ''}")
    f32, f64 = matmul_rates(device, 512 if args.smoke else 8192)
    print(f"matmul: float32 (IEEE) {f32:.2f} TFLOP/s, float64 {f64:.2f} TFLOP/s: float64 / float32 = 1/{f32 / f64:.1f}")
    metrics = {n: knn_and_fid(n, d, device, 500) for n in ns}
    batch, batches, size = (8, 2, 64) if args.smoke else (200, 10, 64)
    ours, bare = extraction(device, batch, batches, size)
    print(
        f"extraction ({size}px -> 299, batch {batch}): ours {ours:.0f} img/s, torch-fidelity bare {bare:.0f} img/s, ratio {ours / bare:.3f}"
    )
    budget = args.every * args.step_seconds
    print(
        f"share of a training budget of {args.every} steps x {args.step_seconds} s = {budget:.0f} s between evaluations:"
    )
    for n, t in metrics.items():
        extract = n / ours
        for label, metric in (("float32 screening", t["pr32"]), ("float64 screening", t["pr64"])):
            total = extract + t["fid"] + metric
            print(
                f"  N={n:>6}, {label}: extraction {extract:.1f} s + FID {t['fid']:.2f} s + precision/recall {metric:.2f} s"
                f" = {total:.1f} s, {100 * total / (budget + total):.2f} % of the wall time"
            )


if __name__ == "__main__":
    main()
