"""Published weights: where they come from, where they are cached, and how they are verified.

Resolution order: an explicit ``weights_path`` -> the cache folder (``LIGHTNING_FID_HOME``, default
``$TORCH_HOME/lightning_fid``) -> a download from the published URL. Downloads and cached files are
checked against the published SHA-256 before use; a cached file with the wrong hash is refused.
Under torch.distributed only rank 0 downloads; the others wait, then read the file.
"""

from __future__ import annotations

import hashlib
import os
import sys
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
    """A published weights file: its short name (for the CLI), URL, file name, and SHA-256 (None when
    its publisher gives none: then its size is checked and the first accepted copy's hash is pinned)."""

    name: str
    url: str
    filename: str
    sha256: str | None
    size: int | None = None


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

# Meta publishes no SHA-256 for dinov2_vitl14_pretrain.pth (nor do its hub code, edm2, dgm-eval or
# torch-fidelity pin one). What can be verified is: its size (1,217,586,395 bytes in public records),
# its state dict's keys and shapes (loading it into the ViT-L/14), and, after that, that it never
# changes: the SHA-256 of the first copy accepted into the cache is pinned next to it (trust on first use).
DINOV2_WEIGHTS = WeightsSpec(
    name="dinov2",
    # Meta's DINOv2 ViT-L/14 backbone (LVD-142M), the file torch.hub's dinov2_vitl14 loads (1.2 GB).
    url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
    filename="dinov2_vitl14_pretrain.pth",
    sha256=None,
    size=1_217_586_395,
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
        problem = _mismatch(spec, tmp, got)
        if problem:
            raise WeightsError(
                f"downloaded {spec.url} but {problem}; the file was discarded. Retry, or fetch it by hand."
            )
    return dest


def pin_file(spec: WeightsSpec) -> Path:
    """Where the SHA-256 of the first accepted copy of weights without a published hash is pinned."""
    return cache_dir() / f"{spec.filename}.sha256"


def _mismatch(spec: WeightsSpec, path: Path, got: str) -> str:
    """Why ``path`` (SHA-256 ``got``) is not the published file, or "" when it is (as far as can be told)."""
    if spec.sha256 is not None:
        return "" if got == spec.sha256 else f"its SHA-256 is {got}, not the published {spec.sha256}"
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return f"it has {size} bytes, not the {spec.size} of the published {spec.filename}"
    pin = pin_file(spec)
    pinned = pin.read_text().strip() if pin.is_file() else None
    if pinned is not None and pinned != got:
        return (
            f"its SHA-256 {got} differs from {pinned}, pinned in {pin} when the first copy was accepted "
            "(delete that file if you replaced the weights on purpose)"
        )
    return ""


def pin_first_use(spec: WeightsSpec, path: Path, sha256: str) -> None:
    """After weights without a published hash loaded correctly from the cache: pin their SHA-256 there,
    once (rank 0), and say so. Later copies must match it."""
    pin = pin_file(spec)
    if spec.sha256 is not None or pin.is_file() or path.resolve().parent != cache_dir().resolve():
        return
    if rank_and_world()[0] == 0:
        with atomic_write(pin, suffix=".tmp") as tmp:
            tmp.write_text(sha256 + "\n")
        print(
            f"lightning_fid: {spec.filename} has no published SHA-256; pinned this copy's ({sha256}) in {pin}: "
            "later copies must match it",
            file=sys.stderr,
        )


#: how to hand each network a file by hand, in Python and in the CLI
EXPLICIT = {
    "inception": "GenerativeMetrics(feature_extractor=InceptionV3(weights_path=..., logits=True)) in Python, "
    "--inception-weights FILE in the CLI",
    "clip": "CMMD(extractor=CLIP(weights_path=...)) in Python, --clip-weights FILE in the CLI",
    "dinov2": "FDDINOv2(extractor=DINOv2(weights_path=...)) in Python, --dinov2-weights FILE in the CLI",
}


def _offline_message(spec: WeightsSpec, dest: Path, exc: BaseException) -> str:
    explicit = EXPLICIT.get(spec.name, "weights_path=... in Python")
    return (
        f"cannot download the {spec.name} weights ({type(exc).__name__}: {exc}).\n"
        f"  URL:         {spec.url}\n"
        f"  destination: {dest}\n"
        f"On a machine with internet access run:\n"
        f"  {prefetch_command(spec)} --dir {dest.parent}\n"
        f"(or: curl -L -o {dest} {spec.url}), then copy the file there or set LIGHTNING_FID_HOME to its "
        f"folder; or give the file by hand: {explicit}."
    )


def _resolve_local(spec: WeightsSpec, allow_download: bool) -> Path:
    cached = cache_dir() / spec.filename
    if cached.is_file():
        problem = _mismatch(spec, cached, sha256_of(cached))
        if problem:
            raise WeightsError(
                f"refusing cached weights {cached}: {problem} (corrupt or partial download?). Delete it and run "
                f"`{prefetch_command(spec)}`."
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
        problem = _mismatch(spec, path, got)
        if problem:
            warnings.warn(
                f"{path} is not the published {spec.name} weights ({problem}): values will not be comparable "
                "with papers.",
                stacklevel=3,
            )
        return path, got
    if not is_distributed():
        path = _resolve_local(spec, allow_download=True)
        return path, spec.sha256 or sha256_of(path)
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
    path = _resolve_local(spec, allow_download=False)
    return path, spec.sha256 or sha256_of(path)


def resolve_weights(spec: WeightsSpec, weights_path: str | os.PathLike | None = None) -> Path:
    """Path of verified weights for ``spec`` (see :func:`resolve_verified`)."""
    return resolve_verified(spec, weights_path)[0]
