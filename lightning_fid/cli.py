"""``lightning-fid``: fetch weights, compute reference statistics, score folders or .npz files.

lightning-fid download inception|clip [--dir D]
lightning-fid stats FOLDER -o ref.npz [--extractor inception|clip] [--num N]
lightning-fid score A B [--metrics fid,kid,cmmd] [--json]     (A, B: image folders or .npz files)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from lightning_fid import registry
from lightning_fid.extractors.weights import PUBLISHED, WeightsError, cache_dir, download, sha256_of
from lightning_fid.real import RealOptions
from lightning_fid.reference import is_statistics_file
from lightning_fid.stats import Statistics, load_statistics


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


_BY_WEIGHTS = {spec.weights: spec for spec in registry.SLOTS.values()}  # "inception" -> the "features" slot


def _real_options(args: argparse.Namespace) -> RealOptions:
    return RealOptions(input_range="uint8", batch_size=args.batch_size, num_real=args.num)


def _folder_stats(folder: str, slots: list, args: argparse.Namespace) -> dict[str, Statistics]:
    """Statistics of an image folder for every slot, through the same resolution the callback uses."""
    from lightning_fid.reference import resolve_reference

    device = torch.device(args.device)
    for slot in slots:
        slot.module.to(device)
    return resolve_reference(folder, slots, _real_options(args), device=device, progress=True).stats


def _cmd_stats(args: argparse.Namespace) -> int:
    from lightning_fid.slots import make_slot

    if not Path(args.source).is_dir():
        raise ValueError(f"{args.source} is not a folder of images")
    spec = _BY_WEIGHTS[args.extractor]
    slot = make_slot(spec.name, spec.default(args.weights), moments=True, keep_features=False)
    stats = _folder_stats(args.source, [slot], args)[slot.name]
    stats.metadata = {"extractor": slot.info.name, "weights_sha256": slot.info.fingerprint, "source": str(args.source)}
    stats.save(args.output)
    print(f"wrote {args.output}: {stats.n} images, {stats.dim}-d {slot.info.name} features")
    return 0


def _side(path: str, metrics: tuple[str, ...], slots: Callable[[], list], args: argparse.Namespace):
    """Statistics of one side: an .npz file (moments-only metrics) or an image folder (any metric)."""
    if is_statistics_file(path):
        needs_images = [spec.name for spec in registry.specs(metrics) if spec.features]
        if needs_images:
            raise ValueError(f"{path} holds statistics only; {needs_images} need an image folder")
        return {spec.slot: load_statistics(path) for spec in registry.specs(metrics)}
    if not Path(path).is_dir():
        raise ValueError(f"{path} is neither an image folder nor an .npz statistics file")
    return _folder_stats(path, slots(), args)


def _cmd_score(args: argparse.Namespace) -> int:
    from lightning_fid.slots import build_slots

    metrics = registry.check_metric_names(m.strip() for m in args.metrics.split(",") if m.strip())
    for path in (args.a, args.b):  # paths first: no weights are loaded for a typo
        if not is_statistics_file(path) and not Path(path).is_dir():
            raise ValueError(f"{path} is neither an image folder nor an .npz statistics file")
    built: list = []

    def slots() -> list:  # built once, only if a folder needs extracting
        if not built:
            weights = {name: getattr(args, f"{spec.weights}_weights") for name, spec in registry.SLOTS.items()}
            built.extend(build_slots(metrics, weights=weights))
        return built

    a, b = (_side(p, metrics, slots, args) for p in (args.a, args.b))
    for name in a:
        if a[name].dim != b[name].dim:
            raise ValueError(
                f"mismatched statistics: {args.a} has {a[name].dim}-d features, {args.b} has {b[name].dim}-d"
            )
    counts = [s.n for side in (a, b) for s in side.values() if s.n is not None]
    subset = min([args.kid_subset_size, *counts])
    options = registry.MetricOptions(kid_subsets=args.kid_subsets, kid_subset_size=max(2, subset))
    registry.prepare_reference(metrics, a, options)
    values: dict[str, float | int | None] = dict(registry.compute(metrics, a, b, options))
    values["n_a"], values["n_b"] = (next(iter(side.values())).n for side in (a, b))
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
    p.add_argument("--extractor", choices=sorted(_BY_WEIGHTS), default="inception")
    p.add_argument("--weights", help="explicit weights file (default: cache or download)")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("score", help="FID / KID / CMMD between two image folders or .npz files")
    p.add_argument("a", help="reference: image folder or .npz")
    p.add_argument("b", help="generated: image folder or .npz")
    p.add_argument("--metrics", default="fid", help=f"comma-separated, from {','.join(registry.METRICS)}")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    for weights in sorted({spec.weights for spec in registry.SLOTS.values()}):
        p.add_argument(f"--{weights}-weights", help=f"explicit {weights} weights file")
    p.set_defaults(func=_cmd_score)
    for sp in (sub.choices["stats"], sub.choices["score"]):
        sp.add_argument("--num", type=int, help="use only the first N images (sorted by path)")
        sp.add_argument("--batch-size", type=int, default=50)
        sp.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    """Every argument, before any computation or weights loading."""
    for name, least in (("kid_subsets", 1), ("kid_subset_size", 2), ("batch_size", 1), ("num", 2)):
        value = getattr(args, name, None)
        if value is not None and value < least:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    if getattr(args, "metrics", None) is not None:
        names = registry.check_metric_names(m.strip() for m in args.metrics.split(",") if m.strip())
        if registry.per_class_slots(names):
            raise ValueError("per-class metrics need class labels, which image folders do not carry; "
                             "use GenerativeMetrics(label_key=..., conditions=...) from Python")  # fmt: skip
    if getattr(args, "device", None) is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError as exc:
            raise ValueError(f"--device {args.device!r} is not a torch device ({exc})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device} but CUDA is not available here; use --device cpu")
    output = getattr(args, "output", None)
    if output is not None and not str(output).endswith(".npz"):
        raise ValueError(f"-o {output}: statistics files end in .npz")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; user errors print one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        return args.func(args)
    except (WeightsError, ValueError, OSError) as exc:  # FileNotFoundError and permissions are OSErrors
        message = " ".join(str(exc).split())
        print(f"lightning-fid {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
