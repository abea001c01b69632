"""``lightning-fid``: fetch weights, compute reference statistics, score folders or .npz files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning_fid.extractors.weights import PUBLISHED, WeightsError, download, sha256_of


def _cmd_download(args: argparse.Namespace) -> int:
    spec = PUBLISHED[args.model]
    directory = Path(args.dir) if args.dir else None
    dest = (directory or _default_dir()) / spec.filename
    if dest.is_file() and sha256_of(dest) == spec.sha256:
        print(f"{spec.name}: already present and verified at {dest}")
        return 0
    path = download(spec, directory)
    print(f"{spec.name}: downloaded and verified (sha256 {spec.sha256}) -> {path}")
    return 0


def _default_dir() -> Path:
    from lightning_fid.extractors.weights import cache_dir

    return cache_dir()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-fid", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="fetch and verify published weights (for offline clusters)")
    p.add_argument("model", choices=sorted(PUBLISHED), help="which weights")
    p.add_argument("--dir", help="target folder (default: $LIGHTNING_FID_HOME or $TORCH_HOME/lightning_fid)")
    p.set_defaults(func=_cmd_download)
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
