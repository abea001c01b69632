"""Why libraries give different FID / KID for the same images (issue #12), measured.

    python benchmarks/comparability.py [--small] [--num N] [--sets 32,299,...] [--write-readme-section PATH]

Every peer runs its own full pipeline, from the same PNG folders (or the same uint8 / float tensors where
tensors are the peer's documented input) to a number, with the SAME Inception weights, passed through the
peer's public options or placed where the peer's own loader looks (the torch hub cache of a temporary
TORCH_HOME). No peer function is patched.

- ours: ``lightning-fid score A B --json --metrics fid,kid`` (the CLI), and the callback-free Python path
  (``InceptionV3`` features into the ``FID`` / ``KID`` metric objects);
- pytorch-fid ``calculate_fid_given_paths``; torch-fidelity ``calculate_metrics``;
- torchmetrics ``FrechetInceptionDistance`` (uint8, ``antialias`` True (default) / False, ``normalize=True``
  on float images) and ``KernelInceptionDistance``;
- clean-fid ``compute_fid`` / ``compute_kid`` (modes "legacy_pytorch" and "clean"), if installed.

Weights are RANDOM (He-scaled convolutions, BatchNorm running statistics calibrated on synthetic images in
train mode, then frozen), written once in torch-fidelity's format, which is also pytorch-fid's: the same
keys, shapes and container. The numbers themselves mean nothing; the relative differences between
libraries are what this measures. Causes are isolated by experiments that change one preprocessing step
at a time and feed pytorch-fid's network (same weights), scored with an exact FID formula.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' random-weights factory

WEIGHTS_NOTE = (
    "RANDOM Inception-v3 weights (He-scaled, BatchNorm statistics calibrated on synthetic images), NOT the "
    "published ones: absolute values mean nothing, only the relative differences between libraries do"
)
TF_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's published file name
PF_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's (and clean-fid legacy_pytorch's)

SETS: dict[str, tuple[int, int]] = {  # name -> (height, width)
    "32": (32, 32),
    "64": (64, 64),
    "256": (256, 256),
    "299": (299, 299),
    "512": (512, 512),
    "200x300": (200, 300),
    "digits": (32, 32),
}
PEERS = ("ours-python", "torch-fidelity", "torchmetrics", "pytorch-fid", "clean-fid")
MATCH = 1e-5  # |relative difference| at or below which a peer counts as reproduced exactly


@dataclass(frozen=True)
class Config:
    sets: tuple[str, ...] = tuple(SETS)
    num: int = 10  # images per folder (both folders); KID uses subsets of all of them
    kid_subsets: int = 10
    peers: tuple[str, ...] = PEERS
    threads: int = 1  # torch + BLAS threads; one is fastest on a shared 2-core machine
    seed: int = 0


SMALL = Config(sets=("32", "299"), num=5, kid_subsets=3)


# ----------------------------------------------------------------------------------------------- images


def synthetic_images(n: int, height: int, width: int, seed: int, variant: int) -> np.ndarray:
    """(n, H, W, 3) uint8: smooth gradient + sinusoidal texture + 2-5 shapes + pixel noise.

    Geometry is in relative coordinates, so the same seed gives the same picture at every size (only the
    pixel noise is drawn per pixel). Variant 1 differs modestly: warmer and brighter colours, finer
    texture, larger shapes, stronger noise.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) / np.sqrt(0.5) + 0.5
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if variant:
            c0, c1 = 0.85 * c0 + np.array([30.0, 10.0, 0.0]), 0.85 * c1 + np.array([30.0, 10.0, 0.0])
        img = c0 + (c1 - c0) * t[..., None]
        freq = rng.uniform(2, 10) * (1.3 if variant else 1.0)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (xx * np.cos(angle + 1) + yy * np.sin(angle + 1)) + phase)
        img += 18.0 * wave[..., None]
        for _ in range(rng.integers(2, 6)):
            cx, cy = rng.uniform(0.15, 0.85, 2)
            rx, ry = rng.uniform(0.06, 0.22, 2) * (1.2 if variant else 1.0)
            colour = rng.uniform(0, 255, 3)
            if rng.random() < 0.5:
                mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
            else:
                mask = (np.abs(xx - cx) < rx) & (np.abs(yy - cy) < ry)
            img[mask] = 0.85 * colour + 0.15 * img[mask]
        img += rng.normal(20.0 if variant else 0.0, 9.0 if variant else 6.0, img.shape)
        out[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def digits_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, PIL-bicubic upsampled to 32x32 RGB, and a perturbed copy of them
    (shifted one pixel right, 10 % darker, Gaussian noise of 10 levels)."""
    from sklearn.datasets import load_digits

    digits = load_digits().images[:n]  # values 0..16, bundled with scikit-learn (no download)
    real = []
    for d in digits:
        small = Image.fromarray(np.rint(d * 255.0 / 16.0).astype(np.uint8), mode="L")
        real.append(np.asarray(small.resize((32, 32), Image.BICUBIC).convert("RGB")))
    real_arr = np.stack(real)
    rng = np.random.default_rng(seed)
    moved = np.roll(real_arr, 1, axis=2).astype(np.float64) * 0.9
    fake = np.clip(np.rint(moved + rng.normal(0.0, 10.0, moved.shape)), 0, 255).astype(np.uint8)
    return real_arr, fake


def write_folder(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return folder


def read_folder(folder: Path) -> torch.Tensor:
    """uint8 (N, 3, H, W) in sorted file order, read as every peer reads them: PIL, convert('RGB')."""
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------- weights


def random_inception_weights(calibration: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """torch-fidelity's Inception-v3 state dict: He-scaled random weights, BatchNorm statistics
    calibrated on ``calibration`` (the tests' factory, so every random-weights number here and in the
    tests is made the same way)."""
    from helpers.weights import random_inception_state_dict

    return random_inception_state_dict(seed, calibration)


# ------------------------------------------------------------------------------------------------ utils


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Silence a peer: its progress bars (stderr), prints (stdout, returned) and warnings."""
    out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield out


@contextlib.contextmanager
def environment(root: Path, threads: int) -> Iterator[None]:
    """A private TORCH_HOME (peers' hub caches) and LIGHTNING_FID_HOME, and a thread limit; all restored."""
    names = ("TORCH_HOME", "LIGHTNING_FID_HOME")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["TORCH_HOME"] = str(root / "torch_home")
    os.environ["LIGHTNING_FID_HOME"] = str(root / "lightning_fid_home")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits  # ships with scikit-learn

        limits: contextlib.AbstractContextManager = threadpool_limits(threads)
    except ImportError:
        limits = contextlib.nullcontext()
    try:
        with limits:
            yield
    finally:
        torch.set_num_threads(old_threads)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def rel(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None:
        return None
    return float(value) / float(reference) - 1.0


def fid_exact(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """FID in float64 without d x d matrices: the nonzero eigenvalues of S1 S2 are the squared singular
    values of C1 C2^T / sqrt((n1-1)(n2-1)) (C: centred features), so tr sqrt(S1 S2) is a nuclear norm.
    Exact for any N; used for the cause experiments (cheap on a CPU, independent of every peer's code)."""
    x1, x2 = f1.double(), f2.double()
    m1, m2 = x1.mean(0), x2.mean(0)
    c1, c2 = x1 - m1, x2 - m2
    n1, n2 = x1.shape[0], x2.shape[0]
    tr_root = torch.linalg.svdvals(c1 @ c2.T).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    value = (m1 - m2).square().sum() + c1.square().sum() / (n1 - 1) + c2.square().sum() / (n2 - 1) - 2 * tr_root
    return float(value)


def has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ------------------------------------------------------------------------------------------------ peers


@dataclass
class Pair:
    """One image set: two PNG folders and their uint8 tensors."""

    name: str
    a: Path
    b: Path
    images_a: torch.Tensor
    images_b: torch.Tensor

    @property
    def n(self) -> int:
        return min(len(self.images_a), len(self.images_b))


def run_ours_cli(pair: Pair, weights: Path, cfg: Config) -> dict:
    from lightning_fid import cli

    args = [
        "score",
        str(pair.a),
        str(pair.b),
        "--json",
        "--metrics",
        "fid,kid",
        "--inception-weights",
        str(weights),
        "--kid-subsets",
        str(cfg.kid_subsets),
        "--kid-subset-size",
        str(pair.n),
        "--device",
        "cpu",
    ]
    with quiet() as out:
        code = cli.main(args)
    if code != 0:
        raise RuntimeError(f"lightning-fid {' '.join(args)} exited with {code}")
    values = json.loads(out.getvalue().strip().splitlines()[-1])
    return {"fid": values["fid"], "kid": values["kid"]}


def run_ours_python(pair: Pair, weights: Path, cfg: Config) -> dict:
    """The callback-free path: InceptionV3 features into the FID / KID metric objects."""
    from lightning_fid import InceptionV3
    from lightning_fid.standalone import FID, KID

    with quiet():
        extractor = InceptionV3(weights_path=weights)
        feats = [torch.cat([extractor(b) for b in x.split(50)]) for x in (pair.images_a, pair.images_b)]
        fid, kid = FID(num_features=2048), KID(num_subsets=cfg.kid_subsets, subset_size=pair.n, seed=0)
        for metric in (fid, kid):
            metric.update(feats[0], real=True)
            metric.update(feats[1], real=False)
        out = {"fid": float(fid.compute()), "kid": float(kid.compute()[0])}
    out["features"] = feats
    return out


def run_torch_fidelity(pair: Pair, weights: Path, cfg: Config) -> dict:
    import torch_fidelity

    with quiet():
        m = torch_fidelity.calculate_metrics(
            input1=str(pair.a),
            input2=str(pair.b),
            cuda=False,
            fid=True,
            kid=True,
            kid_subsets=cfg.kid_subsets,
            kid_subset_size=pair.n,
            feature_extractor_weights_path=str(weights),
            verbose=False,
            cache=False,
        )
    return {"fid": m["frechet_inception_distance"], "kid": m["kernel_inception_distance_mean"]}


def run_pytorch_fid(pair: Pair, weights: Path, cfg: Config) -> dict:
    """pytorch-fid's folder API; its loader finds the weights in $TORCH_HOME/hub/checkpoints."""
    from pytorch_fid.fid_score import calculate_fid_given_paths

    with quiet():
        fid = calculate_fid_given_paths(
            [str(pair.a), str(pair.b)], batch_size=50, device="cpu", dims=2048, num_workers=0
        )
    return {"fid": float(fid)}


def _torchmetrics_fid(pair: Pair, weights: Path, antialias: bool, floats: tuple | None = None) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    with quiet():
        metric = FrechetInceptionDistance(
            feature=2048, normalize=floats is not None, antialias=antialias, feature_extractor_weights_path=str(weights)
        )
        inputs = floats if floats is not None else (pair.images_a, pair.images_b)
        for x, real in zip(inputs, (True, False)):
            for batch in x.split(50):
                metric.update(batch, real=real)
        return float(metric.compute())


def run_torchmetrics(pair: Pair, weights: Path, cfg: Config) -> dict:
    """uint8 with antialias=True (default) and False; normalize=True on the floats a generator would
    have produced before its PNGs were written; KID (no weights option: torch-fidelity's loader finds
    the weights in $TORCH_HOME/hub/checkpoints; antialias=True is fixed)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    from lightning_fid import to_uint8

    out = {"fid": _torchmetrics_fid(pair, weights, antialias=True)}
    out["fid_noaa"] = _torchmetrics_fid(pair, weights, antialias=False)
    g = torch.Generator().manual_seed(cfg.seed + 7)
    floats = tuple(
        ((x.double() + torch.rand(x.shape, generator=g, dtype=torch.float64) * 0.98 - 0.49) / 255.0).clamp(0, 1).float()
        for x in (pair.images_a, pair.images_b)
    )
    # Rounding (ours, save_image + PNG) gives back exactly the PNG values; truncation does not.
    out["floats_round_trip"] = all(
        torch.equal(to_uint8(f, (0.0, 1.0)), x) for f, x in zip(floats, (pair.images_a, pair.images_b))
    )
    out["floats_truncated_share"] = float(
        np.mean([((f * 255).byte() != x).float().mean().item() for f, x in zip(floats, (pair.images_a, pair.images_b))])
    )
    out["fid_float"] = _torchmetrics_fid(pair, weights, antialias=True, floats=floats)
    with quiet():
        kid = KernelInceptionDistance(feature=2048, subsets=cfg.kid_subsets, subset_size=pair.n)
        for x, real in zip((pair.images_a, pair.images_b), (True, False)):
            kid.update(x, real=real)
        out["kid"] = float(kid.compute()[0])
    return out


def _pf_trunk() -> torch.nn.Module:
    """pytorch-fid's FID-Inception without its resize and normalisation (pool3 of normalised 299 input),
    loaded by pytorch-fid from the hub cache."""
    from pytorch_fid.inception import InceptionV3 as PFInception

    with quiet():
        return PFInception([3], resize_input=False, normalize_input=False).eval()


def run_clean_fid(pair: Pair, weights: Path, cfg: Config) -> dict:
    """legacy_pytorch: fully clean-fid's own code (its pytorch-fid network copy loads the hub-cached file).
    clean: clean-fid's resize, batching and FID with the network supplied through its public
    ``custom_feat_extractor``, doing what its InceptionV3W does in that mode: (x - 128) / 128, then the net.
    legacy_tensorflow cannot run with our weights (see the report)."""
    from cleanfid import fid as cfid

    cpu = torch.device("cpu")
    common = {"num_workers": 0, "batch_size": 50, "device": cpu, "verbose": False, "use_dataparallel": False}
    out = {}
    with quiet():
        out["fid_legacy"] = float(cfid.compute_fid(str(pair.a), str(pair.b), mode="legacy_pytorch", **common))
        out["kid_legacy"] = float(cfid.compute_kid(str(pair.a), str(pair.b), mode="legacy_pytorch", **common))
        trunk = _pf_trunk()

        def clean_network(x: torch.Tensor) -> torch.Tensor:  # InceptionV3W.forward, resize_inside=False
            assert x.shape[2:] == (299, 299), x.shape
            with torch.no_grad():
                return trunk((x - 128) / 128)[0].view(x.shape[0], 2048)

        out["fid_clean"] = float(
            cfid.compute_fid(str(pair.a), str(pair.b), mode="clean", custom_feat_extractor=clean_network, **common)
        )
    return out


# ---------------------------------------------------------------------------------- cause experiments


def variant_features(trunk: torch.nn.Module, images: torch.Tensor, resize: str, norm: str) -> torch.Tensor:
    """Features of pytorch-fid's network (same weights) after one preprocessing recipe.

    resize: "tf1" = TF1 bilinear (torch-fidelity's, ours) on [0, 255] floats; "torch" = F.interpolate
    bilinear, align_corners=False, no antialias, on x / 255 floats (pytorch-fid's order of operations).
    norm: "128" = (x - 128) / 128 (TF graph, torch-fidelity, ours); "255" = 2 (x / 255) - 1 (pytorch-fid).
    """
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    feats = []
    for batch in images.split(50):
        x = batch.float()
        if resize == "tf1":
            x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
            x = (x - 128) / 128 if norm == "128" else 2 * (x / 255) - 1
        else:
            x = F.interpolate(x / 255, size=(299, 299), mode="bilinear", align_corners=False)
            x = (x * 255 - 128) / 128 if norm == "128" else 2 * x - 1
        with torch.no_grad():
            feats.append(trunk(x)[0].flatten(1))
    return torch.cat(feats)


def run_experiments(pair: Pair, ours_features: list[torch.Tensor], cfg: Config) -> dict:
    from torch_fidelity.metric_kid import kid_features_to_metric

    from lightning_fid import kid

    trunk = _pf_trunk()
    fa, fb = ours_features
    out = {"fid_exact_ours": fid_exact(fa, fb)}
    check = variant_features(trunk, pair.images_a[:2], "tf1", "128")
    out["network_max_abs_diff"] = float((check - fa[:2]).abs().max() / fa[:2].abs().max())
    identity = pair.images_a.shape[2:] == (299, 299)
    for key, resize, norm in (("norm", "tf1", "255"), ("resize", "torch", "128"), ("pf_recipe", "torch", "255")):
        if identity and key == "resize":
            out["fid_resize"] = out["fid_exact_ours"]  # both resizes are the identity at 299 x 299
            continue
        va, vb = (variant_features(trunk, x, resize, norm) for x in (pair.images_a, pair.images_b))
        out[f"fid_{key}"] = fid_exact(va, vb)
    half = max(2, pair.n // 2)  # KID subsets smaller than N: each library draws different subsets
    with quiet():
        out["kid_half_ours"] = kid(fa, fb, num_subsets=cfg.kid_subsets, subset_size=half, seed=0)[0]
        out["kid_half_torch_fidelity"] = kid_features_to_metric(
            fa, fb, kid_subsets=cfg.kid_subsets, kid_subset_size=half, verbose=False
        )["kernel_inception_distance_mean"]
    return out


RUNNERS: dict[str, Callable[[Pair, Path, Config], dict]] = {
    "ours-cli": run_ours_cli,
    "ours-python": run_ours_python,
    "torch-fidelity": run_torch_fidelity,
    "torchmetrics": run_torchmetrics,
    "pytorch-fid": run_pytorch_fid,
    "clean-fid": run_clean_fid,
}
NEEDS = {
    "torch-fidelity": "torch_fidelity",
    "torchmetrics": "torchmetrics",
    "pytorch-fid": "pytorch_fid",
    "clean-fid": "cleanfid",
}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("lightning-fid", "torch", "torch-fidelity", "torchmetrics", "pytorch-fid", "clean-fid", "pillow"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


@dataclass
class Report:
    config: Config
    results: dict[str, dict[str, dict]] = field(default_factory=dict)  # set -> runner -> values
    seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def prepare(root: Path, cfg: Config) -> tuple[Path, dict[str, Pair]]:
    """Write the image folders and the weights (one file, copied under both peers' cache names)."""
    pairs = {}
    for name in cfg.sets:
        if name == "digits":
            real, fake = digits_images(cfg.num, cfg.seed)
        else:
            h, w = SETS[name]
            real = synthetic_images(cfg.num, h, w, cfg.seed + 1, 0)
            fake = synthetic_images(cfg.num, h, w, cfg.seed + 2, 1)
        a = write_folder(root / "images" / name / "a", real)
        b = write_folder(root / "images" / name / "b", fake)
        pairs[name] = Pair(name, a, b, read_folder(a), read_folder(b))
    calib = np.concatenate([synthetic_images(12, 299, 299, cfg.seed + 101, v) for v in (0, 1)])
    state = random_inception_weights(torch.from_numpy(calib).permute(0, 3, 1, 2).contiguous(), cfg.seed)
    weights = root / "weights" / TF_WEIGHTS_NAME
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, weights)
    hub = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    hub.mkdir(parents=True, exist_ok=True)
    for name in (TF_WEIGHTS_NAME, PF_WEIGHTS_NAME):  # where torch-fidelity's / pytorch-fid's loaders look
        shutil.copyfile(weights, hub / name)
    return weights, pairs


def run(cfg: Config, workdir: Path | None = None, log: Callable[[str], None] | None = None) -> Report:
    """Run every selected peer on every selected image set; return all numbers."""
    log = log or (lambda s: None)
    start = time.perf_counter()
    report = Report(cfg, versions=versions())
    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="lightning_fid_comparability_")
        workdir = Path(tmp)
    try:
        with environment(Path(workdir), cfg.threads):
            weights, pairs = prepare(Path(workdir), cfg)
            log(f"prepared {len(pairs)} image sets x 2 x {cfg.num} PNGs and the weights in {workdir}")
            for name, pair in pairs.items():
                results: dict[str, dict] = {}
                for peer in ("ours-cli", "ours-python", *[p for p in PEERS if p != "ours-python"]):
                    if peer != "ours-cli" and peer not in cfg.peers:
                        continue
                    if peer in NEEDS and not has(NEEDS[peer]):
                        report.skipped[peer] = f"{NEEDS[peer]} is not installed"
                        continue
                    t0 = time.perf_counter()
                    results[peer] = RUNNERS[peer](pair, weights, cfg)
                    results[peer]["seconds"] = time.perf_counter() - t0
                    log(f"  {name:>8} {peer:<15} {results[peer]['seconds']:6.1f} s")
                if "ours-python" in results and has("pytorch_fid") and has("torch_fidelity"):
                    t0 = time.perf_counter()
                    results["experiments"] = run_experiments(pair, results["ours-python"].pop("features"), cfg)
                    log(f"  {name:>8} {'experiments':<15} {time.perf_counter() - t0:6.1f} s")
                results.get("ours-python", {}).pop("features", None)
                report.results[name] = results
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    report.seconds = time.perf_counter() - start
    return report


# --------------------------------------------------------------------------------------------- analysis


def relative(report: Report) -> dict[str, dict[str, float | None]]:
    """set -> {row key: relative difference} for every row of the tables (KID rows: see kid_abs)."""
    out = {}
    for name, r in report.results.items():
        ours = r["ours-cli"]
        e, tm, cf = r.get("experiments", {}), r.get("torchmetrics", {}), r.get("clean-fid", {})
        pf, exact = r.get("pytorch-fid", {}).get("fid"), e.get("fid_exact_ours")
        out[name] = {
            "python.fid": rel(r.get("ours-python", {}).get("fid"), ours["fid"]),
            "python.kid": rel(r.get("ours-python", {}).get("kid"), ours["kid"]),
            "tf.fid": rel(r.get("torch-fidelity", {}).get("fid"), ours["fid"]),
            "tf.kid": rel(r.get("torch-fidelity", {}).get("kid"), ours["kid"]),
            "tm.fid": rel(tm.get("fid"), ours["fid"]),
            "tm.kid": rel(tm.get("kid"), ours["kid"]),
            "tm_noaa.fid": rel(tm.get("fid_noaa"), ours["fid"]),
            "tm_float.fid": rel(tm.get("fid_float"), ours["fid"]),
            "pf.fid": rel(pf, ours["fid"]),
            "cf_legacy.fid": rel(cf.get("fid_legacy"), ours["fid"]),
            "cf_legacy.kid": rel(cf.get("kid_legacy"), ours["kid"]),
            "cf_clean.fid": rel(cf.get("fid_clean"), ours["fid"]),
            # experiments: one preprocessing change at a time, same network, exact formula
            "x.network": e.get("network_max_abs_diff"),
            "x.norm": rel(e.get("fid_norm"), exact),
            "x.resize": rel(e.get("fid_resize"), exact),
            "x.pf_recipe": rel(e.get("fid_pf_recipe"), exact),
            "x.tm_resize": rel(tm.get("fid"), tm.get("fid_noaa")),
            "x.tm_quant": rel(tm.get("fid_float"), tm.get("fid")),
            "x.cf_legacy_vs_pf": rel(cf.get("fid_legacy"), pf),
            "x.kid_half": rel(e.get("kid_half_torch_fidelity"), e.get("kid_half_ours")),
            # each library's FID formula against the exact one, on identical features
            "f.ours": rel(ours["fid"], exact),
            "f.tf": rel(r.get("torch-fidelity", {}).get("fid"), exact),
            "f.tm": rel(tm.get("fid_noaa"), exact),
            "f.pf": rel(pf, e.get("fid_pf_recipe")),
        }
    return out


def kid_abs(report: Report) -> dict[str, dict[str, float | None]]:
    """set -> {KID row key: absolute difference to ours} (KID can be ~0, where relative ones blow up)."""
    out = {}
    for name, r in report.results.items():
        ours = r["ours-cli"]["kid"]
        peers = {
            "python.kid": r.get("ours-python", {}).get("kid"),
            "tf.kid": r.get("torch-fidelity", {}).get("kid"),
            "tm.kid": r.get("torchmetrics", {}).get("kid"),
            "cf_legacy.kid": r.get("clean-fid", {}).get("kid_legacy"),
        }
        out[name] = {k: (None if v is None else float(v) - ours) for k, v in peers.items()}
    return out


def _span(values: list[float | None]) -> str:
    vals = [abs(v) for v in values if v is not None]
    if not vals:
        return "n/a"
    lo, hi = min(vals), max(vals)
    if hi == 0:
        return "0"
    if hi < 1e-3:
        return f"≤ {hi:.0e}"
    lo_s, hi_s = f"{100 * lo:.2g}", f"{100 * hi:.2g}"
    return f"{hi_s} %" if lo_s == hi_s else f"{lo_s} to {hi_s} %"


def fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0"
    return f"{v:+.1e}" if abs(v) < 1e-3 else f"{100 * v:+.2f} %"


ROWS = [  # (key, peer · setting, metric)
    ("python.fid", "ours, Python path (`InceptionV3` features → `FID`)", "FID"),
    ("python.kid", "ours, Python path (→ `KID`)", "KID"),
    ("tf.fid", "torch-fidelity `calculate_metrics` (folders)", "FID"),
    ("tf.kid", "torch-fidelity `calculate_metrics` (folders)", "KID"),
    ("tm_noaa.fid", "torchmetrics FID, uint8, `antialias=False`", "FID"),
    ("tm.fid", "torchmetrics FID, uint8 (default `antialias=True`)", "FID"),
    ("tm.kid", "torchmetrics KID, uint8 (antialias fixed True)", "KID"),
    ("tm_float.fid", "torchmetrics FID, `normalize=True`, float generator output", "FID"),
    ("pf.fid", "pytorch-fid `calculate_fid_given_paths`", "FID"),
    ("cf_legacy.fid", 'clean-fid `compute_fid`, mode="legacy_pytorch"', "FID"),
    ("cf_legacy.kid", 'clean-fid `compute_kid`, mode="legacy_pytorch"', "KID"),
    ("cf_clean.fid", 'clean-fid `compute_fid`, mode="clean" (network via `custom_feat_extractor`)', "FID"),
]


def _is299(name: str) -> bool:
    return SETS[name] == (299, 299)


def causes(report: Report) -> dict[str, tuple[str, str]]:
    """Row key -> (cause as measured, which setting of ours reproduces the peer)."""
    rels, kabs = relative(report), kid_abs(report)
    sets = list(rels)
    other = [s for s in sets if not _is299(s)]
    at299 = [s for s in sets if _is299(s)]

    def span(key: str, where: list[str] | None = None) -> str:
        return _span([rels[s].get(key) for s in (sets if where is None else where)])

    def kspan(key: str) -> str:
        vals = [abs(kabs[s][key]) for s in sets if kabs[s].get(key) is not None]
        return f"|ΔKID| ≤ {max(vals):.0e}" if vals else "n/a"

    def reproduced(key: str, how: str) -> str:
        vals = {s: rels[s].get(key) for s in sets if rels[s].get(key) is not None}
        ok = [s for s, v in vals.items() if abs(v) <= MATCH]
        if vals and len(ok) == len(vals):
            return "default"
        if ok:
            return f"default at {', '.join(ok)} only; elsewhere none ({how})"
        return f"none ({how})"

    at299_note = f"; at 299 the resize is the identity ({span('tm.fid', at299)})" if at299 else ""
    formula = "the FID formula only, on identical features"
    return {
        "python.fid": (f"none: same features, float64 moments ({span('python.fid')})", "is ours"),
        "python.kid": (f"none: same features and subsets ({kspan('python.kid')})", "is ours"),
        "tf.fid": (
            f"{formula} (float32 mean, eigvals of Σ1Σ2: {span('f.tf')} from the exact value; ours {span('f.ours')})",
            reproduced("tf.fid", ""),
        ),
        "tf.kid": (
            f"none: same features; subsets of all N are permutations ({kspan('tf.kid')}, float32 kernels)",
            "default",
        ),
        "tm_noaa.fid": (
            f"{formula} (eigvals of Σ1Σ2, result cast to float32: {span('f.tm')} from the exact value)",
            reproduced("tm_noaa.fid", ""),
        ),
        "tm.fid": (
            "resize: torch's antialiased bilinear instead of TF1 bilinear (vs torchmetrics' own "
            f"antialias=False: {span('x.tm_resize', other)}){at299_note}",
            reproduced("tm.fid", "needs torch's antialiased bilinear"),
        ),
        "tm.kid": (
            "as the FID row: antialiased resize (KernelInceptionDistance has no antialias option)",
            reproduced("tm.kid", "needs torch's antialiased bilinear"),
        ),
        "tm_float.fid": (
            "quantisation: `(x * 255).byte()` truncates where we, like save_image + PNG, round "
            f"(vs torchmetrics' own uint8 path: {span('x.tm_quant')}), plus the antialiased resize",
            "none (give torchmetrics uint8, e.g. `lightning_fid.to_uint8(x, (0, 1))`, to agree)",
        ),
        "pf.fid": (
            "normalisation 2x/255-1 instead of (x-128)/128 (alone: "
            f"{span('x.norm')}) and, at sizes ≠ 299, torch's bilinear resize instead of TF1's (alone: "
            f"{span('x.resize', other)}); its recipe on the same network, scored exactly, reproduces it "
            f"({span('f.pf')}, scipy sqrtm)",
            '`InceptionV3(preprocess="pytorch-fid")` (its resize and 2x-1; features equal to 1e-5, '
            "tested in tests/test_extractors.py), up to the FID formula's ~1e-6",
        ),
        "cf_legacy.fid": (
            "pytorch-fid's preprocessing (bilinear on [0, 255] floats, then x/255, 2x-1) and sqrtm; "
            f"vs pytorch-fid: {span('x.cf_legacy_vs_pf')}",
            'as pytorch-fid: `InceptionV3(preprocess="pytorch-fid")`',
        ),
        "cf_legacy.kid": (
            "pytorch-fid's preprocessing, as the FID row",
            'as pytorch-fid: `InceptionV3(preprocess="pytorch-fid")` (other subsets)',
        ),
        "cf_clean.fid": (
            "resize: PIL bicubic (antialiased), per channel in float mode 'F', not requantised"
            + (f"; at 299 no resize, formula only ({span('cf_clean.fid', at299)})" if at299 else ""),
            reproduced("cf_clean.fid", "needs PIL's float bicubic"),
        ),
    }


EXPERIMENTS = [
    ("x.network", "network check: pytorch-fid's net on our preprocessing vs our features (max abs. diff. / max)"),
    ("x.norm", "normalisation only: 2x/255-1 instead of (x-128)/128"),
    ("x.resize", "resize only: torch bilinear (pytorch-fid's) instead of TF1 bilinear"),
    ("x.pf_recipe", "both: pytorch-fid's recipe"),
    ("x.tm_resize", "torchmetrics: antialias=True vs its own antialias=False"),
    ("x.tm_quant", "torchmetrics: normalize=True on float output vs its own uint8 path"),
    ("x.cf_legacy_vs_pf", "clean-fid legacy_pytorch vs pytorch-fid"),
    ("x.kid_half", "KID on subsets of N/2: torch-fidelity's draws vs ours, same features"),
    ("f.ours", "FID formula vs exact, same features: ours (eigh)"),
    ("f.tf", "… torch-fidelity (eigvals, float32 mean)"),
    ("f.tm", "… torchmetrics (torch eigvals, float32 result)"),
    ("f.pf", "… pytorch-fid (scipy sqrtm), on its recipe's features"),
]


def render(report: Report) -> str:
    rels = relative(report)
    sets = list(rels)
    cfg = report.config
    lines = [
        "## Comparability with other libraries, measured",
        "",
        f"> **{WEIGHTS_NOTE}.**",
        "",
        f"`python benchmarks/comparability.py`: {len(sets)} image sets of {cfg.num} + {cfg.num} PNGs (synthetic "
        "gradients + texture + shapes + noise, two modestly different distributions; scikit-learn digits "
        "upsampled to 32×32 vs a shifted, darkened, noisy copy), KID over "
        f"{cfg.kid_subsets} subsets of all {cfg.num} images, {report.seconds:.0f} s on the CPU. Each library runs "
        "its own pipeline from the files (torchmetrics: from the uint8 / float tensors it documents) with the "
        "same weights. Entries are relative differences to `lightning-fid score` (`+1.0e-07`, or `+1.23 %`); "
        f"|Δ| ≤ {MATCH:.0e} counts as reproduced. N is tiny, so every covariance is singular: the FID formulas "
        "then disagree at the 1e-6 level (last rows of the second table); that is not a preprocessing effect.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()) + ".",
        "",
        "| image set | " + " | ".join(sets) + " |",
        "|---|" + "---|" * len(sets),
        "| size (H×W) | " + " | ".join(f"{SETS[s][0]}×{SETS[s][1]}" for s in sets) + " |",
        "| ours: FID | " + " | ".join(f"{report.results[s]['ours-cli']['fid']:.5g}" for s in sets) + " |",
        "| ours: KID | " + " | ".join(f"{report.results[s]['ours-cli']['kid']:.4g}" for s in sets) + " |",
        "",
        "| peer · setting | metric | " + " | ".join(sets) + " | cause (measured) | reproduced by ours with |",
        "|---|---|" + "---|" * len(sets) + "---|---|",
    ]
    cause = causes(report)
    for key, label, metric in ROWS:
        values = [rels[s].get(key) for s in sets]
        if all(v is None for v in values):
            continue
        why, ours = cause[key]
        lines.append(f"| {label} | {metric} | " + " | ".join(fmt(v) for v in values) + f" | {why} | {ours} |")
    lines += [
        "",
        f"KID rows are relative to our KID, which at N = {cfg.num} is within its noise of 0 on several sets: large "
        "percentages there are small absolute differences (`kid_abs` in `--json`). The KID rows that must match "
        "(ours, torch-fidelity; torchmetrics at 299) agree to |ΔKID| ≤ 1e-5.",
        "",
        "Cause experiments: pytorch-fid's network (same weights) fed one preprocessing change at a time and scored "
        "with an exact FID (nuclear norm of the centred cross-Gram matrix, no 2048×2048 eigenproblem), "
        "relative to the same on our features; peers' own variants; and each formula on identical features:",
        "",
        "| experiment | " + " | ".join(sets) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for key, label in EXPERIMENTS:
        values = [rels[s].get(key) for s in sets]
        if all(v is None for v in values):
            continue
        lines.append(f"| {label} | " + " | ".join(fmt(v) for v in values) + " |")
    tm = [report.results[s].get("torchmetrics", {}) for s in sets]
    if any(tm):
        share = np.mean([t["floats_truncated_share"] for t in tm if t])
        trip = all(t["floats_round_trip"] for t in tm if t)
        lines += [
            "",
            "The float images are the PNG values plus uniform noise of ±0.49 levels, /255 (what a generator emits "
            f"before its samples are saved): rounding gives the PNG values back ({'checked' if trip else 'NOT'} for "
            f"`lightning_fid.to_uint8`), torchmetrics' truncation lowers {100 * share:.0f} % of the pixels by one "
            "level. Plain `x / 255` floats truncate back to `x` exactly (all 256 values in float32), so "
            "`normalize=True` on images read from files equals the uint8 path.",
        ]
    if report.skipped:
        lines += ["", "Not run: " + "; ".join(f"{k} ({v})" for k, v in sorted(report.skipped.items())) + "."]
    lines += [
        "",
        'clean-fid\'s "clean" and "legacy_tensorflow" modes load NVlabs\' TorchScript `inception-2015-12-05.pt` '
        "(program and weights in one archive, fetched into /tmp): random weights cannot be written in that "
        'format without the original program, so "clean" runs clean-fid\'s own resize, batching and FID with '
        "the network passed through its public `custom_feat_extractor`, doing what its wrapper does in that mode "
        '((x-128)/128, then the network); "legacy_tensorflow", whose resize is inside the TorchScript program, '
        "is not measured.",
        "",
        "Claims checked on this run (tests/test_comparability.py checks them again on a small run):",
        "",
    ]
    results = claim_results(report)
    for text, ok in results:
        lines.append(f"- {'✓' if ok else '✗ FAILED:'} {text}")
    failed = [text for text, ok in results if not ok]
    if failed:
        lines += ["", f"**{len(failed)} claim(s) failed.**"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- claims


def claim_results(report: Report) -> list[tuple[str, bool]]:
    """The statements the README section makes, each with whether this run supports it. A claim whose
    rows were not run (peer not installed or not selected) is left out."""
    rels, kabs = relative(report), kid_abs(report)
    sets = list(rels)
    other = [s for s in sets if not _is299(s)]
    at299 = [s for s in sets if _is299(s)]

    def values(key: str, where: list[str] | None, table: dict) -> list[float] | None:
        vals = [table[s].get(key) for s in (sets if where is None else where)]
        return None if not vals or any(v is None for v in vals) else vals

    def within(key: str, tol: float, where: list[str] | None = None, table: dict = rels) -> bool | None:
        vals = values(key, where, table)
        return None if vals is None else all(abs(v) <= tol for v in vals)

    def beyond(key: str, tol: float, where: list[str] | None = None) -> bool | None:
        vals = values(key, where, rels)
        return None if vals is None else all(abs(v) > tol for v in vals)

    def both(a: bool | None, b: bool | None) -> bool | None:
        if a is None or b is None:
            return None if (a is None and b is None) else (a if b is None else b)
        return a and b

    def pf_is_norm_at_299() -> bool | None:
        pairs = [(rels[s].get("pf.fid"), rels[s].get("x.norm")) for s in at299]
        if not pairs or any(p is None or n is None for p, n in pairs):
            return None
        return all(abs(p - n) <= MATCH for p, n in pairs)

    claims = [
        (
            "the Python path equals the CLI at every size (FID 1e-9 relative, |ΔKID| ≤ 1e-9)",
            both(within("python.fid", 1e-9), within("python.kid", 1e-9, table=kabs)),
        ),
        (
            "pytorch-fid's network on our preprocessing gives our features (1e-4 of the largest) at every size",
            within("x.network", 1e-4),
        ),
        (
            "every FID formula (ours, torch-fidelity, torchmetrics, pytorch-fid) is within 1e-5 of the exact value "
            "on identical features",
            both(
                both(within("f.ours", MATCH), within("f.tf", MATCH)), both(within("f.tm", MATCH), within("f.pf", MATCH))
            ),
        ),
        (
            "torch-fidelity equals ours at every size (FID 1e-5 relative, |ΔKID| ≤ 1e-5)",
            both(within("tf.fid", MATCH), within("tf.kid", 1e-5, table=kabs)),
        ),
        ("torchmetrics with antialias=False equals ours to 1e-5 at every size", within("tm_noaa.fid", MATCH)),
        (
            "torchmetrics' default (antialias=True) equals ours at 299 (1e-5) and differs by more than 1e-3 at "
            "every other size",
            both(within("tm.fid", MATCH, at299) if at299 else None, beyond("tm.fid", 1e-3, other) if other else None),
        ),
        (
            "torchmetrics' KID (antialias fixed True) equals ours at 299 (|ΔKID| ≤ 1e-5)",
            within("tm.kid", 1e-5, at299, table=kabs) if at299 else None,
        ),
        (
            "torchmetrics' normalize=True on float generator output differs from its own uint8 path by more than "
            "1e-4 at every size (truncation)",
            beyond("x.tm_quant", 1e-4),
        ),
        ("pytorch-fid differs from ours by more than 1e-3 at every size, 299 included", beyond("pf.fid", 1e-3)),
        (
            "the normalisation alone (2x/255-1 vs (x-128)/128) changes FID by more than 1e-3 at every size",
            beyond("x.norm", 1e-3),
        ),
        ("at 299, pytorch-fid's whole difference is the normalisation (within 1e-5)", pf_is_norm_at_299()),
        (
            "pytorch-fid's recipe (torch bilinear on x/255, 2x-1) on the same network reproduces pytorch-fid to "
            "1e-5 at every size",
            within("f.pf", MATCH),
        ),
        ("clean-fid legacy_pytorch equals pytorch-fid to 1e-5 at every size", within("x.cf_legacy_vs_pf", MATCH)),
        (
            "clean-fid clean equals ours at 299 (1e-5) and differs by more than 1e-3 at every other size",
            both(
                within("cf_clean.fid", MATCH, at299) if at299 else None,
                beyond("cf_clean.fid", 1e-3, other) if other else None,
            ),
        ),
        (
            "KID on subsets smaller than N differs between libraries (other draws) by more than 1e-3",
            beyond("x.kid_half", 1e-3),
        ),
    ]
    return [(text, bool(ok)) for text, ok in claims if ok is not None]


def check_claims(report: Report) -> list[str]:
    """The claims this run contradicts (empty when all hold)."""
    return [text for text, ok in claim_results(report) if not ok]


def to_json(report: Report) -> dict:
    return {
        "weights": WEIGHTS_NOTE,
        "config": report.config.__dict__,
        "seconds": report.seconds,
        "versions": report.versions,
        "skipped": report.skipped,
        "results": report.results,
        "relative": relative(report),
        "kid_abs": kid_abs(report),
        "claims": claim_results(report),
    }


def from_json(data: dict) -> Report:
    """A report back from ``--json`` output (to re-render the tables without re-running the peers)."""
    config = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["config"].items()})
    return Report(config, data["results"], data["seconds"], data["skipped"], data["versions"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help=f"quick run: sets {SMALL.sets}, {SMALL.num} images each")
    parser.add_argument("--num", type=int, help="images per folder (default 10; --small: 5)")
    parser.add_argument("--sets", help=f"comma-separated, from {','.join(SETS)}")
    parser.add_argument("--peers", help=f"comma-separated, from {','.join(PEERS)} (ours-cli always runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    parser.add_argument("--workdir", help="keep images and weights here (default: a temporary folder)")
    parser.add_argument("--write-readme-section", metavar="PATH", help="also write the markdown to PATH")
    parser.add_argument("--json", metavar="PATH", help="write all raw numbers to PATH")
    parser.add_argument("--from-json", metavar="PATH", help="re-render the tables of an earlier --json run")
    args = parser.parse_args(argv)
    if args.from_json:
        report = from_json(json.loads(Path(args.from_json).read_text()))
        text = render(report)
        print(text)
        if args.write_readme_section:
            Path(args.write_readme_section).write_text(text)
        return 1 if check_claims(report) else 0
    cfg = SMALL if args.small else Config()
    changes: dict = {"threads": args.threads}
    if args.num is not None:
        changes["num"] = args.num
    if args.sets:
        unknown = set(args.sets.split(",")) - set(SETS)
        if unknown:
            parser.error(f"unknown sets {sorted(unknown)}")
        changes["sets"] = tuple(args.sets.split(","))
    if args.peers:
        changes["peers"] = tuple(args.peers.split(","))
    cfg = Config(**{**cfg.__dict__, **changes})
    if cfg.num < 3:
        parser.error("--num must be at least 3")
    workdir = Path(args.workdir) if args.workdir else None
    report = run(cfg, workdir, log=lambda s: print(s, file=sys.stderr, flush=True))
    text = render(report)
    print(text)
    if args.write_readme_section:
        Path(args.write_readme_section).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(report), indent=1, default=str))
    return 1 if check_claims(report) else 0


if __name__ == "__main__":
    sys.exit(main())
