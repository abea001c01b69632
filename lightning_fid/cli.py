"""``lightning-fid``: fetch weights, compute reference statistics, score folders or .npz files.

lightning-fid download inception|clip [--dir D]
lightning-fid stats FOLDER -o ref.npz [--extractor inception|clip] [--num N]
lightning-fid score A B [--metrics fid,kid,cmmd] [--json]     (A, B: image folders or .npz files)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from lightning_fid.extractors.weights import PUBLISHED, WeightsError, cache_dir, download, sha256_of


def _cmd_download(args: argparse.Namespace) -> int:
    spec = PUBLISHED[args.model]
    directory = Path(args.dir) if args.dir else None
    dest = (directory or cache_dir()) / spec.filename
    if dest.is_file() and sha256_of(dest) == spec.sha256:
        print(f"{spec.name}: already present and verified at {dest}")
        return 0
    path = download(spec, directory)
    print(f"{spec.name}: downloaded and verified (sha256 {spec.sha256}) -> {path}")
    return 0


def _extractor(kind: str, weights: str | None):
    from lightning_fid.evaluation import make_slot
    from lightning_fid.extractors import CLIP, InceptionV3

    module = InceptionV3(weights) if kind == "inception" else CLIP(weights)
    return make_slot("features" if kind == "inception" else "cmmd", module, moments=True, keep_features=True)


def _folder_stats(folder: str, slots, num: int | None, args):
    from lightning_fid.evaluation import collect
    from lightning_fid.real import RealSource, count_available

    source = RealSource(folder)
    n = count_available(source, num)
    device = torch.device(args.device)
    for slot in slots:
        slot.module.to(device)
    return collect(source, n, slots, args.batch_size, device, "uint8", progress=True, desc=f"reading {folder}")


def _cmd_stats(args: argparse.Namespace) -> int:
    if not Path(args.source).is_dir():
        raise ValueError(f"{args.source} is not a folder of images")
    slot = _extractor(args.extractor, args.weights)
    slot.keep_features = False
    stats = _folder_stats(args.source, [slot], args.num, args)[slot.name]
    from lightning_fid.stats import Statistics

    meta = {"extractor": slot.info.name, "weights_sha256": slot.info.fingerprint, "source": str(args.source)}
    Statistics(stats.mu.cpu().numpy(), stats.sigma.cpu().numpy(), stats.n, meta).save(args.output)
    print(f"wrote {args.output}: {stats.n} images, {stats.mu.shape[0]}-d {slot.info.name} features")
    return 0


def _side(path: str, metrics: tuple[str, ...], slots: dict, args):
    """Statistics of one side: a folder (all metrics) or an .npz file (FID only)."""
    from lightning_fid.evaluation import SetStats
    from lightning_fid.stats import load_statistics

    if str(path).endswith(".npz"):
        if set(metrics) - {"fid"}:
            raise ValueError(f"{path} holds statistics only; {sorted(set(metrics) - {'fid'})} need an image folder")
        s = load_statistics(path)
        return {"features": SetStats(mu=torch.from_numpy(s.mu), sigma=torch.from_numpy(s.sigma), n=s.n or 0)}
    if not Path(path).is_dir():
        raise ValueError(f"{path} is neither an image folder nor an .npz statistics file")
    return _folder_stats(path, list(slots.values()), args.num, args)


def _cmd_score(args: argparse.Namespace) -> int:
    from lightning_fid.evaluation import compute_metrics, prepare_reference

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    unknown = set(metrics) - {"fid", "kid", "cmmd"}
    if unknown or not metrics:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; choose from fid, kid, cmmd")
    slots = {}
    if {"fid", "kid"} & set(metrics):
        slots["features"] = _extractor("inception", args.inception_weights)
    if "cmmd" in metrics:
        slots["cmmd"] = _extractor("clip", args.clip_weights)
    a, b = (_side(p, metrics, slots, args) for p in (args.a, args.b))
    for name in a:
        if a[name].dim != b[name].dim:
            raise ValueError(
                f"mismatched statistics: {args.a} has {a[name].dim}-d features, {args.b} has {b[name].dim}-d"
            )
    prepare_reference(a, "features" if "fid" in metrics else None)
    subset = min(args.kid_subset_size, a.get("features").n, b.get("features").n) if "kid" in metrics else 2
    values = compute_metrics(metrics, a, b, args.kid_subsets, subset, 0, 10.0, 1000.0)
    values["n_a"], values["n_b"] = a[next(iter(a))].n, b[next(iter(b))].n
    if args.json:
        print(json.dumps(values, sort_keys=True))
    else:
        for key, value in values.items():
            print(f"{key:>8}: {value:.6g}" if isinstance(value, float) else f"{key:>8}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-fid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="fetch and verify published weights (for offline clusters)")
    p.add_argument("model", choices=sorted(PUBLISHED), help="which weights")
    p.add_argument("--dir", help="target folder (default: $LIGHTNING_FID_HOME or $TORCH_HOME/lightning_fid)")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("stats", help="reference statistics of an image folder, as a pytorch-fid .npz")
    p.add_argument("source", help="folder of images")
    p.add_argument("-o", "--output", required=True, help="the .npz to write (mu, sigma, n, metadata)")
    p.add_argument("--extractor", choices=("inception", "clip"), default="inception")
    p.add_argument("--weights", help="explicit weights file (default: cache or download)")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("score", help="FID / KID / CMMD between two image folders or .npz files")
    p.add_argument("a", help="reference: image folder or .npz")
    p.add_argument("b", help="generated: image folder or .npz")
    p.add_argument("--metrics", default="fid", help="comma-separated: fid,kid,cmmd (kid/cmmd need folders)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--inception-weights", help="explicit Inception weights file")
    p.add_argument("--clip-weights", help="explicit CLIP weights file")
    p.set_defaults(func=_cmd_score)
    for sp in (sub.choices["stats"], sub.choices["score"]):
        sp.add_argument("--num", type=int, help="use only the first N images (sorted by path)")
        sp.add_argument("--batch-size", type=int, default=50)
        sp.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (WeightsError, ValueError, FileNotFoundError) as exc:
        print(f"lightning-fid {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
