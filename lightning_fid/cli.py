"""lightning-fid: fetch weights, compute reference statistics, score folders or reference files.

lightning-fid download inception|clip|dinov2 [--dir D]
lightning-fid stats FOLDER -o ref.npz [--extractor inception|clip|dinov2] [--num N]
                   [--format lightning-fid|adm|edm2|pytorch-fid]       (edm2: -o ref.pkl)
lightning-fid score A B [--metrics fid,kid,cmmd] [--protocol adm] [--json]
    (A, B: image folders, or reference files: ADM / EDM / pytorch-fid / clean-fid / lightning-fid .npz,
     EDM2 .pkl)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from lightning_fid.engine._export import STATS_FORMATS, export_reference
from lightning_fid.engine._file_slots import check_file_for_metrics
from lightning_fid.engine._formats import ANY, ReferenceFile, is_reference_file
from lightning_fid.engine._networks import standard_identity
from lightning_fid.engine._real import RealOptions
from lightning_fid.engine._scoring import Scorer
from lightning_fid.engine._slots import standard_slot_name
from lightning_fid.engine._stats import Statistics, check_identity
from lightning_fid.extractors.weights import PUBLISHED, WeightsError, cache_dir, download, sha256_of
from lightning_fid.metrics.base import Metric, RunInfo
from lightning_fid.metrics.catalog import METRICS
from lightning_fid.protocols import DEFAULT_PROTOCOL, PROTOCOLS, deviations, get_protocol


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


def _real_stats(path: str, slots: list, args: argparse.Namespace) -> dict[str, Statistics]:
    """Statistics of an image folder or a reference file for every slot, through the same resolution
    the callback uses (an ADM batch's images go through the real pass)."""
    from lightning_fid.engine._reference import resolve_reference

    device = torch.device(args.device)
    for slot in slots:
        slot.module.to(device)
    return resolve_reference(path, slots, _real_options(args), device=device, progress=True).stats


def _cmd_stats(args: argparse.Namespace) -> int:
    weights = {name: getattr(args, f"{name}_weights") for name in NETWORKS}
    lines = export_reference(
        args.source,
        args.output,
        args.format,
        extractor=args.extractor,
        weights=weights,
        options=_real_options(args),
        device=args.device,
    )
    print(lines[0])
    for line in lines[1:]:
        print(f"lightning-fid stats: warning: {line}", file=sys.stderr)
    return 0


def _metrics(args: argparse.Namespace, count: int | None = None) -> tuple[Metric, ...]:
    """The metric objects of ``--metrics`` with the CLI's options; KID's subset size is lowered to
    ``count`` (the smallest side) with a warning, never silently."""
    from lightning_fid.metrics import KID, InceptionScore

    protocol = get_protocol(args.protocol)
    names = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else list(protocol.metrics)
    subset = args.kid_subset_size
    if count is not None and "kid" in names and subset > count:
        print(
            f"lightning-fid score: warning: --kid-subset-size {subset} is larger than the {count} samples of the "
            f"smaller side; using {count}",
            file=sys.stderr,
        )
        subset = count
    options = {"kid": lambda: KID(args.kid_subsets, subset)}
    if args.is_splits is not None:  # else the protocol's Inception Score (ADM: splits of 5000)
        options["is"] = lambda: InceptionScore(args.is_splits)
    return protocol.resolve([options[n]() if n in options else n for n in names])


def _card(args: argparse.Namespace, metrics: tuple[Metric, ...], slots: list, a: dict, n_b: int | None) -> dict:
    """The protocol card of a ``score`` run (the reference side: its file's hash, or the folder)."""
    from lightning_fid.engine._card import protocol_card

    protocol = get_protocol(args.protocol)
    first = next(iter(a.values())).metadata
    reference = f"{first.get('format')}:sha256:{first['sha256']}" if "sha256" in first else str(Path(args.a).resolve())
    return protocol_card(
        protocol=protocol,
        deviations=deviations(protocol, metrics, None),
        metrics=metrics,
        slot_of=[standard_slot_name(m) for m in metrics],
        slots=slots,
        reference_key=reference,
        reference_stats=a,
        generated={"source": str(Path(args.b).resolve()), "n": n_b, "num": args.num},
        labels="image folders or files: labels are not read",
    )


def _served(file: ReferenceFile, metrics: tuple[Metric, ...]) -> bool:
    """Whether the file's own statistics serve every metric (no network needs to run for this side)."""
    return all(
        not (m.needs.features or m.needs.per_class) and (ANY in file.moments or standard_slot_name(m) in file.moments)
        for m in metrics
    )


def _side(path: str, metrics: tuple[Metric, ...], slots: Callable[[], list], args: argparse.Namespace):
    """Statistics of one side: a reference file (its statistics, and an ADM batch's images for the rest)
    or an image folder (any metric)."""
    if not is_reference_file(path):
        return _real_stats(path, slots(), args)
    file = check_file_for_metrics(path, metrics)
    if not _served(file, metrics):
        return _real_stats(path, slots(), args)
    out = {}
    for m in metrics:
        role = standard_slot_name(m)
        found = ANY if ANY in file.moments else role
        name, dim = standard_identity(m.needs.network, m.needs.output)
        try:
            source = f"{path} ({file.format}: {file.keys[found]})"
            check_identity(file.moments[found], name, dim, None, source, hint=file.notes.get(found))
        except ValueError as exc:
            raise ValueError(
                f"{exc} (the CLI scores the standard networks' statistics; for your own encoder's, "
                "use lightning_fid.metrics.frechet_distance in Python)"
            ) from None
        out[role] = file.moments[found]
    return out


def _cmd_score(args: argparse.Namespace) -> int:
    from lightning_fid.engine._slots import build_slots

    metrics = _metrics(args)
    for path in (args.a, args.b):  # paths first: no weights are loaded for a typo
        if not (is_reference_file(path) and Path(path).is_file()) and not Path(path).is_dir():
            raise ValueError(f"{path} is neither an image folder nor an .npz or .pkl reference file")
        if is_reference_file(path) and args.num is not None:
            raise ValueError(f"--num {args.num} selects images of a folder, but {path} is a reference file")
    built: list = []

    def slots() -> list:  # built once, only if a folder needs extracting
        if not built:
            weights = {name: getattr(args, f"{name}_weights") for name in NETWORKS}
            resize = get_protocol(args.protocol).dinov2_resize  # EDM2: DINOv2 with its torch resize
            built.extend(
                build_slots(metrics, weights=weights, options={"dinov2": {"resize": resize}} if resize else None)[0]
            )
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
    if args.json:  # the values and what determines them
        print(json.dumps({**values, "card": _card(args, metrics, built, a, n_b)}, sort_keys=True))
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

    p = sub.add_parser("stats", help="reference statistics of an image folder, in this or another tool's format")
    p.add_argument("source", help="folder of images")
    p.add_argument("-o", "--output", required=True, help="the file to write (.npz; .pkl for --format edm2)")
    p.add_argument("--extractor", choices=NETWORKS, default="inception", help="the network of --format lightning-fid")
    p.add_argument(
        "--format",
        choices=STATS_FORMATS,
        default="lightning-fid",
        help="lightning-fid (default: mu, sigma, n and the network's identity; pytorch-fid and EDM read it too), "
        "adm (guided-diffusion's reference batch: arr_0 images, mu, sigma, mu_s, sigma_s), edm2 (EDM2's .pkl: fid, "
        "and fd_dinov2 when DINOv2 weights are given or cached), pytorch-fid (mu, sigma with pytorch-fid's "
        "own preprocessing)",
    )
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("score", help="any metric between image folders or reference files (.npz, .pkl)")
    p.add_argument("a", help="reference: image folder, or an ADM / EDM / pytorch-fid / clean-fid .npz or EDM2 .pkl")
    p.add_argument("b", help="generated: image folder or reference file (e.g. an ADM sample batch)")
    p.add_argument("--metrics", help=f"comma-separated, from {','.join(METRICS)} (default: the protocol's)")
    p.add_argument(
        "--protocol",
        choices=[name for name in PROTOCOLS if name != "pytorch-fid"],  # the CLI reads Inception the TF graph's way
        default=DEFAULT_PROTOCOL,
        help="the metrics and options of a paper family (default: torch-fidelity, whose metric is fid)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object: the values and the protocol card")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default: 100)")
    p.add_argument(
        "--kid-subset-size",
        type=int,
        default=1000,
        help="samples per KID subset (default: 1000; lowered, with a warning, to the smaller side)",
    )
    p.add_argument("--is-splits", type=int, help="Inception Score splits (default: 10; adm: one per 5000 samples)")
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
    if getattr(args, "protocol", None) is not None:
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
    if output is not None and args.format == "edm2" and not str(output).endswith(".pkl"):
        raise ValueError(f"-o {output}: EDM2 reference files (--format edm2) end in .pkl")
    if output is not None and args.format != "edm2" and not str(output).endswith(".npz"):
        raise ValueError(f"-o {output}: statistics files end in .npz (--format {args.format})")


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
