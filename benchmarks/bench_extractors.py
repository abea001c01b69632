"""Extraction throughput: lightning_fid's full path vs torch-fidelity's bare extractor, same batches.

    python benchmarks/bench_extractors.py [--device cpu|cuda] [--batches 6] [--batch-size 25] [--clip]

Our path = to_uint8 (float generator output in (-1, 1) -> uint8, as a PNG) + frozen extractor call;
the bare path = torch-fidelity's FeatureExtractorInceptionV3 on the already-converted uint8 batch.
Uses the published weights when cached, else random weights in the published format (the speed is
the same). Prints images/s and the ratio ours / bare (target >= 0.95).
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

from lightning_fid.engine._images import to_uint8  # noqa: E402
from lightning_fid.extractors import CLIP, Frozen, InceptionV3, run_extractor  # noqa: E402
from lightning_fid.extractors.weights import CLIP_WEIGHTS, INCEPTION_WEIGHTS, cache_dir  # noqa: E402


def weights_file(spec, make) -> Path:
    cached = cache_dir() / spec.filename
    if cached.is_file():
        return cached
    path = Path(tempfile.mkdtemp()) / spec.filename
    print(f"(published {spec.name} weights not cached: timing random weights in the same format)")
    return make(path)


def timed(fn, batches) -> float:
    fn(batches[0])  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in batches:
        fn(b)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--clip", action="store_true", help="also time CLIP ViT-L/14@336 (slow on CPU)")
    args = parser.parse_args()
    torch.manual_seed(0)
    batches = [
        torch.rand(args.batch_size, 3, args.size, args.size, device=args.device) * 2 - 1 for _ in range(args.batches)
    ]
    n = args.batches * args.batch_size
    from helpers.weights import write_random_clip, write_random_inception

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inception = InceptionV3(weights_file(INCEPTION_WEIGHTS, write_random_inception)).to(args.device)
    ours = Frozen(inception)
    bare = inception.net  # torch-fidelity's FeatureExtractorInceptionV3 itself
    uint8 = [to_uint8(b) for b in batches]
    t_bare = timed(lambda u: bare(u)[0], uint8)
    t_ours = timed(lambda b: run_extractor(ours, to_uint8(b), "uint8"), batches)
    print(
        f"Inception ({args.device}, {args.size}px -> 299, batch {args.batch_size}): "
        f"ours {n / t_ours:.1f} img/s, torch-fidelity bare {n / t_bare:.1f} img/s, ratio {t_bare / t_ours:.3f}"
    )
    if args.clip:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clip_path = weights_file(CLIP_WEIGHTS, lambda p: write_random_clip(p, resolution=336, full_size=True))
            clip = CLIP(clip_path).to(args.device)
        wrapped = Frozen(clip)
        t_clip = timed(lambda b: run_extractor(wrapped, to_uint8(b), "uint8"), batches[:2])
        print(f"CLIP ViT-L/14@336 ({args.device}, fp32): {2 * args.batch_size / t_clip:.2f} img/s")


if __name__ == "__main__":
    main()
