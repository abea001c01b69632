"""Published weights: where they come from, where they are cached, and how they are verified.

Resolution order: an explicit ``weights_path`` -> the cache folder (``LIGHTNING_FID_HOME``, default
``$TORCH_HOME/lightning_fid``) -> a download from the published URL. Downloads and cached files are
checked against the published SHA-256 before use; a cached file with the wrong hash is refused.
Under torch.distributed only rank 0 downloads; the others wait, then read the file.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from lightning_fid.engine._distributed import broadcast_error, is_distributed, rank_and_world
from lightning_fid.engine._files import atomic_write

DOWNLOAD_TIMEOUT_S = 15


@dataclass(frozen=True)
class WeightsSpec:
    """A published weights file: its short name (for the CLI), URL, file name and SHA-256."""

    name: str
    url: str
    filename: str
    sha256: str


INCEPTION_WEIGHTS = WeightsSpec(
    name="inception",
    # torch-fidelity's release of the TF inception-2015-12-05 graph ported to PyTorch; the suffix of
    # the file name is the start of its SHA-256 (the same file pytorch-fid publishes as pt_inception-...).
    url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    filename="weights-inception-2015-12-05-6726825d.pth",
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
)

CLIP_WEIGHTS = WeightsSpec(
    name="clip",
    # OpenAI's CLIP ViT-L/14@336px TorchScript archive; the URL path holds its SHA-256.
    url="https://openaipublic.azureedge.net/clip/models/"
    "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
    filename="ViT-L-14-336px.pt",
    sha256="3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
)

# PLACEHOLDER, NOT A HASH: the published SHA-256 of dinov2_vitl14_pretrain.pth could not be found from
# this workplace (Meta publishes none; the file name carries none). Until it is filled in with the value
# of `sha256sum dinov2_vitl14_pretrain.pth` on a verified download, downloads and cached copies are
# refused (the error prints the file's actual hash) and an explicit weights_path= works with a warning.
DINOV2_SHA256 = "UNKNOWN-fill-in-the-sha256-of-dinov2_vitl14_pretrain.pth"

DINOV2_WEIGHTS = WeightsSpec(
    name="dinov2",
    # Meta's DINOv2 ViT-L/14 backbone (LVD-142M), the file torch.hub's dinov2_vitl14 loads (1.2 GB).
    url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
    filename="dinov2_vitl14_pretrain.pth",
    sha256=DINOV2_SHA256,
)

PUBLISHED = {spec.name: spec for spec in (INCEPTION_WEIGHTS, CLIP_WEIGHTS, DINOV2_WEIGHTS)}


class WeightsError(RuntimeError):
    """Weights are missing, unreadable or fail their hash check."""


def cache_dir() -> Path:
    """``$LIGHTNING_FID_HOME``, else ``$TORCH_HOME/lightning_fid`` (TORCH_HOME defaults to ~/.cache/torch)."""
    if os.environ.get("LIGHTNING_FID_HOME"):
        return Path(os.environ["LIGHTNING_FID_HOME"]).expanduser()
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(torch_home).expanduser() / "lightning_fid"


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prefetch_command(spec: WeightsSpec) -> str:
    return f"lightning-fid download {spec.name}"


def _fetch(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Stream ``url`` into ``dest`` with a progress bar (network access lives here alone)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                bar.update(len(chunk))


def download(spec: WeightsSpec, directory: Path | None = None) -> Path:
    """Download ``spec`` into ``directory`` (default: the cache), verify its SHA-256, return the path."""
    directory = Path(directory) if directory is not None else cache_dir()
    dest = directory / spec.filename
    with atomic_write(dest, suffix=".part") as tmp:
        try:
            _fetch(spec.url, tmp)
        except Exception as exc:  # offline, DNS, HTTP errors, timeouts
            raise WeightsError(_offline_message(spec, dest, exc)) from exc
        got = sha256_of(tmp)
        if got != spec.sha256:
            raise WeightsError(
                f"downloaded {spec.url} but its SHA-256 is {got}, not the published {spec.sha256}; "
                "the file was discarded. Retry, or fetch it by hand and pass weights_path=."
            )
    return dest


def _offline_message(spec: WeightsSpec, dest: Path, exc: BaseException) -> str:
    return (
        f"cannot download the {spec.name} weights ({type(exc).__name__}: {exc}).\n"
        f"  URL:         {spec.url}\n"
        f"  destination: {dest}\n"
        f"On a machine with internet access run:\n"
        f"  {prefetch_command(spec)} --dir {dest.parent}\n"
        f"(or: curl -L -o {dest} {spec.url}), then copy the file there, set LIGHTNING_FID_HOME to its "
        f"folder, or pass weights_path= explicitly."
    )


def _resolve_local(spec: WeightsSpec, allow_download: bool) -> Path:
    cached = cache_dir() / spec.filename
    if cached.is_file():
        got = sha256_of(cached)
        if got != spec.sha256:
            raise WeightsError(
                f"refusing cached weights {cached}: SHA-256 {got} differs from the published {spec.sha256} "
                f"(corrupt or partial download?). Delete it and run `{prefetch_command(spec)}`."
            )
        return cached
    if not allow_download:
        raise WeightsError(_offline_message(spec, cached, FileNotFoundError("not in the cache")))
    return download(spec)


def resolve_verified(spec: WeightsSpec, weights_path: str | os.PathLike | None = None) -> tuple[Path, str]:
    """(path, SHA-256) of the weights for ``spec``: explicit file, cache, or download (rank 0 only).

    Cached and downloaded files are verified against the published hash; an explicit
    ``weights_path`` must exist and be readable, and if its hash differs from the published one a
    warning says that numbers will not be comparable with published ones. The hash is returned so
    callers can record it without reading a large file twice.
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights_path {path} does not exist or is not a file")
        try:
            got = sha256_of(path)
        except OSError as exc:
            raise WeightsError(f"cannot read weights_path {path}: {exc}") from exc
        if got != spec.sha256:
            warnings.warn(
                f"{path} is not the published {spec.name} weights (SHA-256 {got[:12]}..., published "
                f"{spec.sha256[:12]}...): values will not be comparable with papers.",
                stacklevel=3,
            )
        return path, got
    if not is_distributed():
        return _resolve_local(spec, allow_download=True), spec.sha256
    # Rank 0 downloads if needed; the others wait and learn of its failure instead of hanging.
    error = None
    if rank_and_world()[0] == 0:
        try:
            _resolve_local(spec, allow_download=True)
        except Exception as exc:  # re-raised on every rank below
            error = f"{type(exc).__name__}: {exc}"
    error = broadcast_error(error)
    if error is not None:
        raise WeightsError(f"rank 0 could not provide the {spec.name} weights: {error}")
    return _resolve_local(spec, allow_download=False), spec.sha256


def resolve_weights(spec: WeightsSpec, weights_path: str | os.PathLike | None = None) -> Path:
    """Path of verified weights for ``spec`` (see :func:`resolve_verified`)."""
    return resolve_verified(spec, weights_path)[0]
