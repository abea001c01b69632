"""lightning-fid: fetch weights, compute reference statistics, score folders or .npz files.

lightning-fid download inception|clip|dinov2 [--dir D]
lightning-fid stats FOLDER -o ref.npz [--extractor inception|clip|dinov2] [--num N]
lightning-fid score A B [--metrics fid,kid,cmmd] [--json]     (A, B: image folders or .npz files)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from lightning_fid.engine._networks import standard_identity
from lightning_fid.engine._real import RealOptions
from lightning_fid.engine._reference import is_statistics_file
from lightning_fid.engine._scoring import Scorer
from lightning_fid.engine._slots import standard_slot_name
from lightning_fid.engine._stats import Statistics, check_identity, identity_metadata, load_statistics
from lightning_fid.extractors.weights import PUBLISHED, WeightsError, cache_dir, download, sha256_of
from lightning_fid.metrics.base import Metric, RunInfo
from lightning_fid.metrics.catalog import METRICS


def _cmd_download(args: argparse.Namespace) -> int:
    spec = PUBLISHED[args.model]
    directory = Path(args.dir) if args.dir else None
    dest = (directory or cache_dir()) / spec.filename
    if dest.is_file() and spec.sha256 is not None and sha256_of(dest) == spec.sha256:
        print(f"{spec.name}: already present and verified at {dest}")
        return 0
    path = dest if dest.is_file() and spec.sha256 is None else download(spec, directory)
    if spec.sha256 is None:  # no published hash: its size was checked; its keys and shapes are checked by loading
        from lightning_fid.extractors.dinov2 import DINOv2

        DINOv2(None if directory is None else path)  # the cache copy: pinned once it loads
        print(f"{spec.name}: {path} has the published size and a DINOv2 ViT-L/14 state dict (sha256 {sha256_of(path)})")
        return 0
    print(f"{spec.name}: downloaded and verified (sha256 {spec.sha256}) -> {path}")
    return 0


NETWORKS = ("inception", "clip", "dinov2")


def _real_options(args: argparse.Namespace) -> RealOptions:
    return RealOptions(input_range="uint8", batch_size=args.batch_size, num_real=args.num)


def _folder_stats(folder: str, slots: list, args: argparse.Namespace) -> dict[str, Statistics]:
    """Statistics of an image folder for every slot, through the same resolution the callback uses."""
    from lightning_fid.engine._reference import resolve_reference

    device = torch.device(args.device)
    for slot in slots:
        slot.module.to(device)
    return resolve_reference(folder, slots, _real_options(args), device=device, progress=True).stats


def _cmd_stats(args: argparse.Namespace) -> int:
    from lightning_fid.engine._networks import standard_network
    from lightning_fid.engine._slots import make_slot

    if not Path(args.source).is_dir():
        raise ValueError(f"{args.source} is not a folder of images")
    slot = make_slot(
        args.extractor,
        standard_network(args.extractor, getattr(args, f"{args.extractor}_weights")),
        moments=True,
        keep_features=False,
    )
    stats = _folder_stats(args.source, [slot], args)[slot.name]
    stats.metadata = {**identity_metadata(slot.info), "source": str(args.source)}
    stats.save(args.output)
    print(f"wrote {args.output}: {stats.n} images, {stats.dim}-d {slot.info.name} features")
    return 0


def _metrics(args: argparse.Namespace, count: int | None = None) -> tuple[Metric, ...]:
    """The metric objects of ``--metrics`` with the CLI's options; KID's subset size is lowered to
    ``count`` (the smallest side) with a warning, never silently."""
    from lightning_fid.metrics import KID, InceptionScore, resolve_metrics

    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    subset = args.kid_subset_size
    if count is not None and "kid" in names and subset > count:
        print(
            f"lightning-fid score: warning: --kid-subset-size {subset} is larger than the {count} samples of the "
            f"smaller side; using {count}",
            file=sys.stderr,
        )
        subset = count
    options = {"kid": lambda: KID(args.kid_subsets, subset), "is": lambda: InceptionScore(args.is_splits)}
    return resolve_metrics([options[n]() if n in options else n for n in names])


def _side(path: str, metrics: tuple[Metric, ...], slots: Callable[[], list], args: argparse.Namespace):
    """Statistics of one side: an .npz file (moments-only metrics) or an image folder (any metric)."""
    if is_statistics_file(path):
        needs_images = [m.key for m in metrics if m.needs.features or m.needs.per_class]
        if needs_images:
            raise ValueError(f"{path} holds statistics only; {needs_images} need an image folder")
        stats = load_statistics(path)
        for network in {m.needs.network for m in metrics}:
            name, dim = standard_identity(network)
            try:
                check_identity(stats, name, dim, None, path)
            except ValueError as exc:
                raise ValueError(
                    f"{exc} (the CLI scores the standard networks' statistics; for your own encoder's, "
                    "use lightning_fid.metrics.frechet_distance in Python)"
                ) from None
        return {standard_slot_name(m): stats for m in metrics}
    if not Path(path).is_dir():
        raise ValueError(f"{path} is neither an image folder nor an .npz statistics file")
    return _folder_stats(path, slots(), args)


def _cmd_score(args: argparse.Namespace) -> int:
    from lightning_fid.engine._slots import build_slots

    metrics = _metrics(args)
    for path in (args.a, args.b):  # paths first: no weights are loaded for a typo
        if not is_statistics_file(path) and not Path(path).is_dir():
            raise ValueError(f"{path} is neither an image folder nor an .npz statistics file")
        if is_statistics_file(path) and args.num is not None:
            raise ValueError(f"--num {args.num} selects images of a folder, but {path} holds statistics already")
    built: list = []

    def slots() -> list:  # built once, only if a folder needs extracting
        if not built:
            weights = {name: getattr(args, f"{name}_weights") for name in NETWORKS}
            built.extend(build_slots(metrics, weights=weights)[0])
        return built

    a, b = (_side(p, metrics, slots, args) for p in (args.a, args.b))
    for name in a:
        if a[name].dim != b[name].dim:
            raise ValueError(
                f"mismatched statistics: {args.a} has {a[name].dim}-d features, {args.b} has {b[name].dim}-d"
            )
        for field in ("extractor", "weights_sha256", "extractor_config"):
            left, right = a[name].metadata.get(field), b[name].metadata.get(field)
            if left is not None and right is not None and left != right:
                raise ValueError(
                    f"{args.a} and {args.b} were computed with different networks ({field} {left} vs "
                    f"{right}): their distance is not comparable with anything"
                )
    counts = [s.n for side in (a, b) for s in side.values() if s.n is not None]
    metrics = _metrics(args, min(counts) if counts else None)
    n_b = next(iter(b.values())).n
    scorer = Scorer(metrics, [standard_slot_name(m) for m in metrics], RunInfo(num_samples=n_b or 2))
    scorer.prepare(a)
    values: dict[str, float | int | None] = dict(scorer.score(a, b))
    values["n_a"], values["n_b"] = next(iter(a.values())).n, n_b
    if any(m.name == "kid" for m in metrics):
        values["kid_subset_size"] = next(m.subset_size for m in metrics if m.name == "kid")
    if args.json:
        print(json.dumps(values, sort_keys=True))
    else:
        for key, value in values.items():
            print(f"{key:>8}: {value:.6g}" if isinstance(value, float) else f"{key:>8}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-fid", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="fetch and verify published weights (for offline clusters)")
    p.add_argument("model", choices=sorted(PUBLISHED), help="which weights")
    p.add_argument("--dir", help="target folder (default: $LIGHTNING_FID_HOME or $TORCH_HOME/lightning_fid)")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("stats", help="reference statistics of an image folder, as a pytorch-fid .npz")
    p.add_argument("source", help="folder of images")
    p.add_argument("-o", "--output", required=True, help="the .npz to write (mu, sigma, n, metadata)")
    p.add_argument("--extractor", choices=NETWORKS, default="inception", help="the network (default: inception)")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("score", help="any metric between two image folders, or Fréchet distances between .npz files")
    p.add_argument("a", help="reference: image folder or .npz")
    p.add_argument("b", help="generated: image folder or .npz")
    p.add_argument("--metrics", default="fid", help=f"comma-separated, from {','.join(METRICS)} (default: fid)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default: 100)")
    p.add_argument(
        "--kid-subset-size",
        type=int,
        default=1000,
        help="samples per KID subset (default: 1000; lowered, with a warning, to the smaller side)",
    )
    p.add_argument("--is-splits", type=int, default=10, help="Inception Score splits (default: 10)")
    p.set_defaults(func=_cmd_score)
    for sp in (sub.choices["stats"], sub.choices["score"]):
        for network in NETWORKS:
            sp.add_argument(
                f"--{network}-weights", help=f"explicit {network} weights file (default: cache or download)"
            )
        sp.add_argument(
            "--num", type=int, help="use only the first N images of a folder, sorted by path (default: all)"
        )
        sp.add_argument("--batch-size", type=int, default=50, help="images per extractor batch (default: 50)")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        sp.add_argument("--device", default=device, help=f"torch device for the networks (default here: {device})")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    """Every argument, before any computation or weights loading."""
    for name, least in (("kid_subsets", 1), ("kid_subset_size", 2), ("is_splits", 1), ("batch_size", 1), ("num", 2)):
        value = getattr(args, name, None)
        if value is not None and value < least:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    if getattr(args, "metrics", None) is not None:
        if any(m.needs.per_class for m in _metrics(args)):
            raise ValueError(
                "per-class metrics need class labels, which image folders do not carry; "
                "use GenerativeMetrics(real=RealData(..., label_key=...), conditions=...) from Python"
            )
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
