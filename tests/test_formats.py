"""Other tools' reference files, read safely: every format's keys, the restricted unpickler against
malicious pickles, adversarial files, which statistic serves which metric, and an ADM batch's images
through the real pass (with the tiny extractors: fast). The writers and the CLI are in test_cli.py."""

from __future__ import annotations

import copyreg
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tiny import TinyFeatures, TinyGAN, make_callback, real_images, tiny_slots
from torch.utils.data import TensorDataset

from lightning_fid import resolve_reference
from lightning_fid.engine._cache import StatsCache
from lightning_fid.engine._file_slots import check_file_for_metrics
from lightning_fid.engine._formats import read_reference_file
from lightning_fid.engine._images import to_uint8
from lightning_fid.engine._real import RealOptions
from lightning_fid.engine._stats import Statistics, load_statistics
from lightning_fid.engine._unpickle import UnsafePickleError
from lightning_fid.extractors.base import run_extractor
from lightning_fid.metrics import resolve_metrics

OPTIONS = RealOptions(input_range=(-1, 1), batch_size=5)
MARKER = Path("/tmp/lightning_fid_h17b_payload_ran")  # a payload that runs creates it


def _moments(d: int, n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n, d)) + np.linspace(0, 1, d)
    return x.mean(0), np.cov(x, rowvar=False)


MU8, SIGMA8 = _moments(8)
MU6, SIGMA6 = _moments(6, seed=1)
SLOT = "inception-v3-tf-2015-12-05"  # the tiny stand-in's slot (a user's network: named after it)


def _images_nhwc(n: int = 37) -> np.ndarray:
    """helpers.tiny's real images as an ADM batch holds them: uint8 N x H x W x 3."""
    return to_uint8(real_images(n), (-1, 1)).permute(0, 2, 3, 1).contiguous().numpy()


# ---------------------------------------------------------------- the restricted unpickler
def _edm2_dict(mu=MU8, sigma=SIGMA8, dinov2=(MU6, SIGMA6), n=60):
    out = {"num_images": n, "fid": {"mu": mu, "sigma": sigma}}  # what edm2's calculate_stats_for_iterable builds
    if dinov2 is not None:
        out["fd_dinov2"] = {"mu": dinov2[0], "sigma": dinov2[1]}
    return out


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_an_edm2_pickle_written_by_plain_pickle_dump_is_read(tmp_path, protocol):
    path = tmp_path / "img64.pkl"
    with open(path, "wb") as f:
        pickle.dump(_edm2_dict(), f, protocol=protocol)  # as edm2's save_stats
    ref = read_reference_file(path)
    assert ref.format == "edm2" and ref.keys == {"inception": "fid", "dinov2": "fd_dinov2"} and ref.images is None
    for role, (mu, sigma) in (("inception", (MU8, SIGMA8)), ("dinov2", (MU6, SIGMA6))):
        stats = ref.moments[role]
        assert torch.equal(stats.mu, torch.from_numpy(mu)) and torch.equal(stats.sigma, torch.from_numpy(sigma))
        assert stats.n == 60 and stats.metadata["format"] == "edm2"
    assert ref.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_numpy_1_module_paths_are_read(tmp_path):
    """Pickles made under numpy 1.x name numpy.core.multiarray; numpy 2 names numpy._core.multiarray."""
    data = pickle.dumps(_edm2_dict(), protocol=2)
    assert b"cnumpy._core.multiarray\n" in data  # this numpy writes 2.x paths: rewrite them as 1.x wrote them
    (tmp_path / "np1.pkl").write_bytes(data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    ref = read_reference_file(tmp_path / "np1.pkl")
    assert torch.equal(ref.moments["inception"].mu, torch.from_numpy(MU8))


def _touch(path):  # importable and harmless-looking: still never called
    Path(path).touch()


class _Payload:
    def __init__(self, reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


class _Custom:  # a class of this module: pickled by reference, refused without importing it
    def __setstate__(self, state):
        MARKER.touch()


MALICIOUS = {
    "os.system": (_Payload((os.system, (f"touch {MARKER}",))), r"global (posix|nt|os)\.system"),
    "builtins.eval": (_Payload((eval, (f"open('{MARKER}', 'w')",))), r"global builtins\.eval"),
    "a function of this module": (_Payload((_touch, (str(MARKER),))), r"global test_formats\._touch"),
    "a custom class": (_Custom(), r"global test_formats\._Custom"),
    "inside the statistics": (
        {"fid": {"mu": MU8, "sigma": _Payload((os.system, (f"touch {MARKER}",)))}},
        r"global (posix|nt|os)\.system",
    ),
}


@pytest.mark.parametrize("name", sorted(MALICIOUS))
def test_malicious_pickles_are_refused_without_running(tmp_path, name):
    payload, refused = MALICIOUS[name]
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump(payload if isinstance(payload, dict) else {"fid": payload}, f)
    with pytest.raises(UnsafePickleError, match=rf"evil\.pkl: refused to unpickle the {refused}"):
        read_reference_file(path)
    assert not MARKER.exists()


RAW_PICKLES = {  # hand-written opcodes: globals no pickle.dump of ours would produce
    "numpy's runstring": (b"cnumpy.testing._private.utils\nrunstring\n(Vx=1\n}tR.", "numpy.testing._private.utils"),
    "_codecs.encode with another codec": (b"c_codecs\nencode\n(Vx\nVrot13\ntR.", "raw.pkl: refused _codecs.encode"),
    "a persistent id": (b"Pfoo\n.", r"raw.pkl: refused a persistent id"),
}


@pytest.mark.parametrize("name", sorted(RAW_PICKLES))
def test_hand_made_pickles_are_refused(tmp_path, name):
    data, match = RAW_PICKLES[name]
    (tmp_path / "raw.pkl").write_bytes(data)
    with pytest.raises(ValueError, match=match):
        read_reference_file(tmp_path / "raw.pkl")


def test_the_extension_registry_goes_through_the_whitelist(tmp_path):
    copyreg.add_extension("os", "system", 4242)  # EXT opcodes name globals by a registered code
    try:
        (tmp_path / "ext.pkl").write_bytes(b"\x80\x02\x83\x92\x10(X\x04\x00\x00\x00truetR.")  # EXT2 4242
        with pytest.raises(UnsafePickleError, match=r"ext.pkl: refused to unpickle the global os\.system"):
            read_reference_file(tmp_path / "ext.pkl")
    finally:
        copyreg.remove_extension("os", "system", 4242)


BAD_PICKLES = {
    "truncated": (pickle.dumps(_edm2_dict())[:-40], "cannot read .* as a statistics .pkl"),
    "not a pickle": (b"GIF89a not a pickle", "cannot read .* as a statistics .pkl"),
    "a list": (pickle.dumps([MU8, SIGMA8]), "holds list: an EDM2 reference .pkl is a dict"),
    "other keys": (pickle.dumps({"mu": MU8, "sigma": SIGMA8}), r"holds \['mu', 'sigma'\]: an EDM2 reference"),
    "object array": (pickle.dumps({"fid": {"mu": np.array([1, "a"], dtype=object)}}), "array of Python objects"),
    "no sigma": (pickle.dumps({"fid": {"mu": MU8}}), "fid must be a dict with 'mu' and 'sigma'"),
    "mu a list": (pickle.dumps({"fid": {"mu": list(MU8), "sigma": SIGMA8}}), r"fid.mu must be an array .* got list"),
    "complex": (pickle.dumps({"fid": {"mu": MU8 + 0j, "sigma": SIGMA8}}), "fid.mu must be an array of real numbers"),
    "shapes": (pickle.dumps(_edm2_dict(mu=MU6)), r"fid.mu has shape \(6,\) and fid.sigma \(8, 8\)"),
    "NaN": (pickle.dumps(_edm2_dict(dinov2=(MU6, SIGMA6 * np.nan))), r"\(fd_dinov2\): fd_dinov2.sigma contains"),
    "asymmetric": (pickle.dumps(_edm2_dict(sigma=SIGMA8 + np.triu(SIGMA8, 1))), "fid.sigma is not symmetric"),
    "num_images 1": (pickle.dumps(_edm2_dict(n=1)), "num_images must be an integer >= 2, got 1"),
}


@pytest.mark.parametrize("name", sorted(BAD_PICKLES))
def test_bad_pickles_are_refused_by_name(tmp_path, name):
    data, match = BAD_PICKLES[name]
    (tmp_path / "ref.pkl").write_bytes(data)
    with pytest.raises(ValueError, match=match):
        read_reference_file(tmp_path / "ref.pkl")


# ---------------------------------------------------------------- .npz formats
def _write(tmp_path, kind):
    path = tmp_path / {"clean-fid": "cifar10_legacy_tensorflow_train_32.npz"}.get(kind, f"{kind}.npz")
    if kind == "lightning-fid":
        Statistics(MU8, SIGMA8, 60, metadata={"extractor": "tiny-features"}).save(path)
    elif kind == "edm":  # NVlabs/edm fid.py ref
        np.savez(path, mu=MU8, sigma=SIGMA8)
    elif kind in ("pytorch-fid", "clean-fid"):  # pytorch-fid save_fid_stats, clean-fid make_custom_stats
        np.savez_compressed(path, mu=MU8, sigma=SIGMA8)
    elif kind == "adm":  # a reference batch: images and both statistics
        np.savez(path, arr_0=_images_nhwc(5), mu=MU8, sigma=SIGMA8, mu_s=MU6, sigma_s=SIGMA6)
    else:  # "adm samples": guided-diffusion's image_sample.py, class-conditional: images and labels
        np.savez(path, _images_nhwc(5), np.arange(5))
    return path


FORMATS = {
    "lightning-fid": ("lightning-fid", {"*": "mu/sigma"}),
    "edm": ("edm", {"*": "mu/sigma"}),
    "pytorch-fid": ("pytorch-fid", {"*": "mu/sigma"}),
    "clean-fid": ("clean-fid", {"*": "mu/sigma"}),
    "adm": ("adm", {"inception": "mu/sigma", "inception-spatial": "mu_s/sigma_s", "images": "arr_0"}),
    "adm samples": ("adm", {"images": "arr_0"}),
}


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_each_format_is_recognised_with_its_keys_and_hash(tmp_path, kind):
    path = _write(tmp_path, kind)
    ref = read_reference_file(path)
    assert (ref.format, ref.keys) == FORMATS[kind]
    assert ref.describe()["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    served = ref.moments.get("*", ref.moments.get("inception"))
    if served is not None:
        assert torch.equal(served.mu, torch.from_numpy(MU8)) and served.metadata["format"] == ref.format
    if ref.images is not None:
        images = torch.from_numpy(_images_nhwc(5)).permute(0, 3, 1, 2)
        assert all(torch.equal(ref.images[i], images[i]) for i in (4, 0, 2))  # memory-mapped, any order
    if kind == "clean-fid":
        assert served.metadata["clean_fid_mode"] == "legacy_tensorflow"


def test_compressed_adm_images_are_streamed_and_load_statistics_skips_them(tmp_path):
    path = tmp_path / "compressed.npz"
    np.savez_compressed(path, arr_0=_images_nhwc(7), mu=MU8, sigma=SIGMA8, mu_s=MU6, sigma_s=SIGMA6)
    ref = read_reference_file(path)
    assert not ref.images.stored and len(ref.images) == 7
    images = torch.from_numpy(_images_nhwc(7)).permute(0, 3, 1, 2)
    assert all(torch.equal(ref.images[i], images[i]) for i in (6, 1, 3, 0))  # seeks both ways
    assert torch.equal(load_statistics(path).mu, torch.from_numpy(MU8))  # the pool statistics alone


BAD_NPZ = {
    "no statistics": (dict(features=np.zeros((3, 3))), r"holds \['features'\], but a statistics file needs"),
    "clean-fid KID features": (dict(feats=np.zeros((3, 8))), "clean-fid's KID features"),
    "object array": (dict(mu=np.array([_Payload((_touch, (str(MARKER),)))], dtype=object)), "cannot read"),
    "NaN in mu_s": (dict(arr_0=_images_nhwc(3), mu_s=MU6 * np.nan, sigma_s=SIGMA6), r"\(mu_s/sigma_s\): mu_s contains"),
    "asymmetric sigma_s": (
        dict(mu_s=MU6, sigma_s=SIGMA6 + np.triu(SIGMA6, 1)),
        r"\(mu_s/sigma_s\): sigma_s is not symmetric",
    ),
    "mu without sigma": (dict(arr_0=_images_nhwc(3), mu=MU8), "holds mu without sigma"),
    "mismatched shapes": (dict(arr_0=_images_nhwc(3), mu=MU6, sigma=SIGMA8), r"mu has shape \(6,\) and sigma \(8, 8\)"),
    "float images": (dict(arr_0=_images_nhwc(3).astype(np.float32)), "holds float32 of shape .* must be uint8"),
    "grey images": (dict(arr_0=_images_nhwc(3)[..., 0]), r"of shape \(3, 8, 8\); reference images must be"),
    "channels first": (dict(arr_0=_images_nhwc(3).transpose(0, 3, 1, 2).copy()), r"shape \(3, 3, 8, 8\)"),
    "object images": (dict(arr_0=np.array([_Payload((_touch, (str(MARKER),)))] * 3, dtype=object)), "holds object"),
}


@pytest.mark.parametrize("name", sorted(BAD_NPZ))
def test_bad_npz_files_are_refused_by_name_and_never_unpickled(tmp_path, name):
    arrays, match = BAD_NPZ[name]
    MARKER.unlink(missing_ok=True)
    np.savez(tmp_path / "bad.npz", **arrays)  # np.savez pickles object arrays: reading must not
    with pytest.raises(ValueError, match=match):
        read_reference_file(tmp_path / "bad.npz")
    assert not MARKER.exists()


# ---------------------------------------------------------------- which statistic serves which metric
def _adm(tmp_path, images=True, mu=True, spatial=True, name="adm.npz", **extra):
    arrays = dict(arr_0=_images_nhwc(12)) if images else {}
    arrays.update(dict(mu=np.zeros(2048), sigma=np.eye(2048)) if mu else {})
    arrays.update(dict(mu_s=np.zeros(2023), sigma_s=np.eye(2023)) if spatial else {})
    np.savez(tmp_path / name, **arrays, **extra)
    return tmp_path / name


def _edm2(tmp_path, fid=2048, dinov2=1024):
    payload = {"num_images": 50, "fid": {"mu": np.zeros(fid), "sigma": np.eye(fid)}}
    if dinov2:
        payload["fd_dinov2"] = {"mu": np.zeros(dinov2), "sigma": np.eye(dinov2)}
    (tmp_path / "ref.pkl").write_bytes(pickle.dumps(payload))
    return tmp_path / "ref.pkl"


def _edm(tmp_path, d=2048):
    np.savez(tmp_path / "edm.npz", mu=np.zeros(d), sigma=np.eye(d))
    return tmp_path / "edm.npz"


FITS = {  # file, metrics -> None (served) or the refusal
    "ADM batch: every metric": (_adm, ("fid", "sfid", "kid", "is", "precision", "fd_dinov2"), None),
    "ADM statistics only: FID and sFID": (lambda p: _adm(p, images=False), ("fid", "sfid"), None),
    "EDM2: FID and FD_DINOv2": (_edm2, ("fid", "fd_dinov2"), None),
    "EDM2 without fd_dinov2": (
        lambda p: _edm2(p, dinov2=0),
        ("fd_dinov2",),
        r"ref.pkl \(edm2\) holds fid but no statistics of DINOv2 features \(FD_DINOv2\), which fd_dinov2 reads",
    ),
    "2048-d fd_dinov2": (
        lambda p: _edm2(p, dinov2=2048),
        ("fd_dinov2",),
        r"\(edm2: fd_dinov2\) holds 2048-d statistics but dinov2-vit-l-14 gives 1024-d features, which fd_dinov2",
    ),
    "sFID on EDM's mu/sigma": (
        _edm,
        ("sfid",),
        r"edm.npz \(edm: mu/sigma\) holds 2048-d statistics but .*-spatial gives 2023-d .* sfid use an ADM reference"
        r" batch with mu_s/sigma_s",
    ),
    "sFID on EDM2": (
        _edm2,
        ("sfid",),
        r"ref.pkl \(edm2\) holds fd_dinov2, fid but no statistics of spatial Inception features \(sFID\), which "
        r"sfid reads; use an ADM reference batch with mu_s/sigma_s",
    ),
    "KID on EDM2": (_edm2, ("fid", "kid"), r"ref.pkl \(edm2\) holds statistics only .* \['kid'\] need the real images"),
    "precision on EDM": (_edm, ("precision",), r"holds statistics only .* \['precision_recall'\] need the real images"),
    "two networks, one mean": (_edm, ("fid", "fd_dinov2"), "holds one mean and covariance .* but the metrics read 2"),
    "per-class on an ADM batch": (_adm, ("fid_per_class",), "per-class metrics: labelled ones"),
}


@pytest.mark.parametrize("name", sorted(FITS))
def test_each_metric_finds_its_statistics_or_is_refused_by_name(tmp_path, name):
    make, names, refusal = FITS[name]
    path, metrics = make(tmp_path), resolve_metrics(list(names))
    if refusal is None:
        check_file_for_metrics(str(path), metrics)
    else:
        with pytest.raises(ValueError, match=refusal):
            check_file_for_metrics(str(path), metrics)


def test_a_misfit_is_refused_when_the_callback_is_made(tmp_path):
    with pytest.raises(ValueError, match="no statistics of DINOv2 features"):
        make_callback(tmp_path, real=str(_edm2(tmp_path, dinov2=0)), metrics=("fid", "fd_dinov2"))


class TinyInception(TinyFeatures):
    """The tiny encoder under the TF Inception's name: an ADM batch's mu/sigma are that network's, and a
    network of another name is refused them (a user's encoder must not be scored against them)."""

    name = "inception-v3-tf-2015-12-05"


def _tiny_moments(images_nhwc: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    feats = run_extractor(TinyInception(), torch.from_numpy(images_nhwc).permute(0, 3, 1, 2), (0.0, 1.0)).double()
    return feats.mean(0), torch.cov(feats.T), feats


def test_an_adm_batch_serves_its_moments_to_fid_and_its_images_to_kid(tmp_path):
    images = _images_nhwc(37)
    np.savez(tmp_path / "adm.npz", arr_0=images, mu=MU8, sigma=SIGMA8)  # moments unlike the images': told apart
    cache = StatsCache(tmp_path / "cache")
    ref = resolve_reference(
        str(tmp_path / "adm.npz"), tiny_slots(("fid", "kid"), TinyInception()), OPTIONS, cache=cache
    )
    stats = ref.stats[SLOT]
    assert torch.equal(stats.mu, torch.from_numpy(MU8)) and torch.equal(stats.sigma, torch.from_numpy(SIGMA8))
    torch.testing.assert_close(stats.features.double(), _tiny_moments(images)[2], rtol=1e-6, atol=1e-7)
    sha = hashlib.sha256((tmp_path / "adm.npz").read_bytes()).hexdigest()
    assert stats.metadata["sha256"] == sha and ref.source["sha256"] == sha and ref.source["format"] == "adm"
    assert ref.source["statistics"] == {SLOT: "mu/sigma + arr_0 features"}
    again_slots = tiny_slots(("fid", "kid"), TinyInception())
    again = resolve_reference(str(tmp_path / "adm.npz"), again_slots, OPTIONS, cache=cache)
    assert again.key == ref.key and again_slots[0].module.module.calls == 0  # the cache, keyed by the hash
    np.savez(tmp_path / "adm.npz", arr_0=images[::-1].copy(), mu=MU8, sigma=SIGMA8)  # same size, other bytes
    other = resolve_reference(
        str(tmp_path / "adm.npz"), tiny_slots(("fid", "kid"), TinyInception()), OPTIONS, cache=cache
    )
    assert other.key != ref.key
    with pytest.raises(ValueError, match=r"adm.npz \(adm: mu/sigma\) holds statistics of inception-v3-tf-2015-12-05"):
        resolve_reference(str(tmp_path / "adm.npz"), tiny_slots(("fid",)), OPTIONS)  # another network's name


def test_an_adm_sample_batch_reads_like_the_same_images_in_a_dataset(tmp_path):
    images = _images_nhwc(23)
    np.savez(tmp_path / "samples.npz", images)  # arr_0 only: everything from the images
    from_file = resolve_reference(str(tmp_path / "samples.npz"), tiny_slots(("fid", "kid")), OPTIONS)
    dataset = TensorDataset(torch.from_numpy(images).permute(0, 3, 1, 2))
    from_data = resolve_reference(dataset, tiny_slots(("fid", "kid")), OPTIONS)
    for field in ("mu", "sigma", "features"):
        assert torch.equal(
            getattr(from_file.stats["tiny-features"], field), getattr(from_data.stats["tiny-features"], field)
        )
    with pytest.raises(ValueError, match="reads batches of data; .*samples.npz is a reference file"):
        resolve_reference(str(tmp_path / "samples.npz"), tiny_slots(), RealOptions(batch_size=5, image_key="x"))


def test_the_callback_scores_an_adm_batch_as_it_scores_the_same_images(tmp_path):
    images = _images_nhwc(37)
    mu, sigma, _ = _tiny_moments(images)  # the batch's statistics are its images' (as a reference batch's are)
    np.savez(tmp_path / "ref.npz", arr_0=images, mu=mu.numpy(), sigma=sigma.numpy())
    from_file = make_callback(real=str(tmp_path / "ref.npz"), feature_extractor=TinyInception())  # FID, KID, CMMD
    values, _ = from_file.evaluate(TinyGAN())
    dataset = TensorDataset(torch.from_numpy(images).permute(0, 3, 1, 2))
    from_data = make_callback(real=dataset, feature_extractor=TinyInception())
    expected, _ = from_data.evaluate(TinyGAN())
    assert values.keys() == expected.keys() and all(np.isfinite(list(values.values())))
    for key in expected:
        assert values[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key
    assert from_file.evaluator.reference.source["format"] == "adm"
