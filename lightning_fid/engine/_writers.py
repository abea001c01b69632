"""Write reference files that other tools read with their own code (``lightning-fid stats --format``).

- ``"pytorch-fid"``: ``mu``, ``sigma`` (float64) with ``np.savez_compressed``, as pytorch-fid's
  ``save_fid_stats`` writes and ``compute_statistics_of_path`` reads (``f['mu'][:], f['sigma'][:]``).
- ``"edm2"``: a pickled ``{'num_images': n, 'fid': {'mu', 'sigma'}, 'fd_dinov2': {'mu', 'sigma'}}`` of
  float64 numpy arrays, as NVlabs/edm2 ``calculate_metrics.py`` ``save_stats`` writes and
  ``load_stats`` reads (``pickle.load``). Pickled with protocol 3 and numpy 1.x's module paths
  (``numpy.core.multiarray``): numpy 2 writes ``numpy._core``, which numpy 1.x cannot import
  (numpy/numpy#28340), while numpy 2 reads numpy 1.x's paths; EDM2's container (NGC PyTorch 24.02)
  has numpy 1.x.
- ``"adm"``: guided-diffusion's reference batch: ``arr_0`` (uint8 N x H x W x 3, the real images) and
  ``mu``, ``sigma``, ``mu_s``, ``sigma_s``, stored uncompressed as ``np.savez`` does, which
  ``evaluations/evaluator.py`` streams (``open_npz_array``) and reads (``read_statistics``). ``arr_0``
  is streamed into the zip, never held whole in memory.

Every file is written atomically (:func:`lightning_fid.engine._files.atomic_write`).
"""

from __future__ import annotations

import os
import pickle
import pickletools
import zipfile
from collections.abc import Iterable, Mapping

import numpy as np

from lightning_fid.engine._files import atomic_write
from lightning_fid.engine._stats import Statistics


def _mu_sigma(stats: Statistics, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not stats.has_moments:
        raise ValueError(f"{what}: statistics without a mean and covariance cannot be written")
    return stats.mu.detach().cpu().double().numpy(), stats.sigma.detach().cpu().double().numpy()


def write_pytorch_fid(path: str | os.PathLike, stats: Statistics) -> None:
    """pytorch-fid's statistics file: ``np.savez_compressed(path, mu=mu, sigma=sigma)``.

    Raises:
        ValueError: statistics without moments.
    """
    mu, sigma = _mu_sigma(stats, str(path))
    with atomic_write(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, mu=mu, sigma=sigma)


def numpy1_pickle(obj: object) -> bytes:
    """``pickle.dumps(obj, protocol=3)`` with numpy 2's ``numpy._core.*`` globals spelled as numpy 1.x's
    ``numpy.core.*`` (the same functions; numpy 2 keeps those paths for old pickles). Protocol 3 writes
    globals as text lines (GLOBAL opcodes, no frames), so each is rewritten exactly where pickletools
    finds it, never by searching the array bytes."""
    data = pickle.dumps(obj, protocol=3)
    out, last = bytearray(), 0
    for op, arg, pos in pickletools.genops(data):
        if op.name != "GLOBAL":
            continue
        module, name = str(arg).split(" ", 1)
        if module.startswith("numpy._core."):
            end = pos + 1 + len(module) + 1 + len(name) + 1  # b"c" module b"\n" name b"\n"
            legacy = "numpy.core." + module[len("numpy._core.") :]
            out += data[last:pos] + b"c" + legacy.encode() + b"\n" + name.encode() + b"\n"
            last = end
    return bytes(out + data[last:])


def write_edm2(path: str | os.PathLike, stats: Mapping[str, Statistics], num_images: int) -> None:
    """EDM2's reference ``.pkl``: ``{'num_images': n, <metric>: {'mu', 'sigma'}, ...}``.

    Args:
        path: the ``.pkl`` to write.
        stats: EDM2's metric names (``"fid"``, ``"fd_dinov2"``) to their statistics.
        num_images: the real sample count (EDM2 records it).

    Raises:
        ValueError: statistics without moments, or a metric name EDM2 does not compute.
    """
    unknown = sorted(set(stats) - {"fid", "fd_dinov2"})
    if unknown:
        raise ValueError(f"EDM2 reference files hold 'fid' and 'fd_dinov2', not {unknown}")
    payload: dict[str, object] = {"num_images": int(num_images)}
    for metric, entry in stats.items():
        mu, sigma = _mu_sigma(entry, f"{path} ({metric})")
        payload[metric] = {"mu": mu, "sigma": sigma}
    with atomic_write(path, suffix=".pkl") as tmp:
        tmp.write_bytes(numpy1_pickle(payload))


def write_adm(
    path: str | os.PathLike,
    images: Iterable[np.ndarray],
    shape: tuple[int, int, int, int],
    pool: Statistics,
    spatial: Statistics,
) -> None:
    """guided-diffusion's reference batch: ``arr_0``, ``mu``, ``sigma``, ``mu_s``, ``sigma_s``.

    Args:
        path: the ``.npz`` to write.
        images: uint8 (B, H, W, 3) batches of the real images, in order, ``shape[0]`` in all.
        shape: (N, H, W, 3) of ``arr_0``.
        pool: the 2048-d pool statistics (``mu``, ``sigma``).
        spatial: the 2023-d spatial statistics (``mu_s``, ``sigma_s``).

    Raises:
        ValueError: a batch of another dtype or size, or another image count than ``shape[0]``.
    """
    arrays = dict(zip(("mu", "sigma"), _mu_sigma(pool, f"{path} (mu/sigma)")))
    arrays.update(zip(("mu_s", "sigma_s"), _mu_sigma(spatial, f"{path} (mu_s/sigma_s)")))
    with atomic_write(path, suffix=".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("arr_0.npy", "w", force_zip64=True) as f:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
                np.lib.format.write_array_header_1_0(f, {**header, "shape": tuple(shape)})
                written = 0
                for batch in images:
                    if batch.dtype != np.uint8 or batch.shape[1:] != tuple(shape[1:]):
                        raise ValueError(
                            f"{path}: arr_0 holds {tuple(shape[1:])} uint8 images, got a {batch.dtype} batch of "
                            f"{batch.shape[1:]}: all reference images must have one size"
                        )
                    f.write(np.ascontiguousarray(batch).tobytes())
                    written += batch.shape[0]
                if written != shape[0]:
                    raise ValueError(f"{path}: arr_0 declares {shape[0]} images, {written} were given")
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, array, allow_pickle=False)
