"""Reference statistics: resolve what the user called "real" into per-slot :class:`Statistics`.

One public function, :func:`resolve_reference`, serves the callback and the CLI: a reference file
(``.npz`` / ``.pkl`` of this package, ADM, EDM, EDM2, pytorch-fid or clean-fid) serves each slot the
statistics its format holds for it, and an ADM batch's images (``arr_0``) go through the real pass for
the others, keyed by the file's SHA-256; anything else (image folder, Dataset, DataLoader, a callable
returning one, or a named source such as the trainer's "train" / "val" loaders) is read once, keyed by
everything that determines its statistics, and taken from the cache when an identical entry exists.
All ranks agree on the cache decision before anyone starts the collective real pass.
"""

from __future__ import annotations

import uuid
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from lightning_fid.engine._cache import StatsCache, cache_key, stable_identity
from lightning_fid.engine._distributed import agreed, any_rank, barrier, rank_and_world
from lightning_fid.engine._file_slots import serve_slots
from lightning_fid.engine._formats import is_reference_file, read_reference_file
from lightning_fid.engine._identity import data_fingerprint
from lightning_fid.engine._images import REAL, check_fill
from lightning_fid.engine._memory import check_memory
from lightning_fid.engine._pipeline import extract_real
from lightning_fid.engine._real import RealOptions, RealSource, count_available
from lightning_fid.engine._slots import Slot
from lightning_fid.engine._stats import Statistics


@dataclass
class Reference:
    """Resolved reference statistics per slot, and the identity they were resolved under."""

    stats: dict[str, Statistics]
    #: the identity: the cache key of the data (or of an ADM batch's images, which includes the file's
    #: hash), or "<format>:sha256:<hash>" of a reference file whose statistics served every slot
    key: str
    #: where the statistics came from, for protocol cards: {"format": "data"} or, for a reference file,
    #: its format ("adm", "edm", "edm2", "pytorch-fid", "clean-fid", "lightning-fid"), path, SHA-256,
    #: keys and, per slot, what served it ("mu/sigma", "fd_dinov2", "arr_0", "mu/sigma + arr_0 features")
    source: dict[str, Any] = field(default_factory=dict)


#: references resolved in this process, by key: several callbacks (or a callback and a script) with
#: the same data, reading and networks share one reference pass without knowing of each other
_RESOLVED: weakref.WeakValueDictionary[str, Reference] = weakref.WeakValueDictionary()


#: earlier name of :func:`is_reference_file`
is_statistics_file = is_reference_file


def resolve_reference(
    real: Any,
    slots: list[Slot],
    options: RealOptions,
    *,
    device: torch.device | str = "cpu",
    cache: StatsCache | None = None,
    named: Mapping[str, Callable[[], Any]] | None = None,
    progress: bool = False,
    identity: Any = None,
    generated: int = 0,
) -> Reference:
    """Statistics of the real data for every slot (a collective call: every rank must make it).

    Args:
        real: a reference file (``.npz`` / ``.pkl``: see :mod:`lightning_fid.engine._formats`), an image
            folder, a Dataset, a DataLoader, a callable returning one of these, or a key of ``named``.
        slots: the extractor slots to fill (see :func:`lightning_fid.engine._pipeline.build_slots`).
        options: how real images are read (range, batch size, count, picking them from batches).
        device: where extraction runs and the statistics live.
        cache: statistics cache; None reads the data every time.
        named: named sources, e.g. ``{"train": trainer_train_loader}``, resolved on use.
        progress: show a progress bar on rank 0.
        identity: what else the statistics are for (the metrics' identities): part of the cache key.
        generated: the most generated samples an evaluation scores: with the real samples, the
            statistics must fit in memory (checked before anything is read).

    Raises:
        ValueError: unreadable or unsuitable data or statistics, naming the file or option.
    """
    device = torch.device(device)
    if is_reference_file(real):
        reference = _from_file(Path(real), slots, options, device, cache, progress, identity, generated)
    else:
        reference = _from_data(_resolve_data(real, named), slots, options, device, cache, progress, identity, generated)
    check_reference(reference.stats, slots)
    return reference


def check_reference(stats: Mapping[str, Statistics], slots: list[Slot]) -> None:
    """Refuse reference statistics that cannot be scored against these slots."""
    for slot in slots:
        s = stats[slot.name]
        if s.n is not None and s.n < 2:
            raise ValueError(f"only {s.n} real sample(s): reference statistics need at least 2")
        if s.dim != slot.info.feature_dim:
            raise ValueError(
                f"real statistics have {s.dim} features but {slot.info.name} gives {slot.info.feature_dim}: "
                "they were computed with another extractor"
            )


def _from_file(
    path: Path,
    slots: list[Slot],
    options: RealOptions,
    device: torch.device,
    cache: StatsCache | None,
    progress: bool,
    identity: Any,
    generated: int,
) -> Reference:
    """Each slot's statistics from the file where it holds them, the rest from its images (ADM's arr_0)
    through the real pass, cached under the file's SHA-256 and the networks."""
    given = {"image_key": options.image_key, "transform": options.transform, "label_key": options.label_key}
    reading = [f"{k}={v!r}" for k, v in given.items() if v is not None]
    if reading:
        raise ValueError(f"RealData({', '.join(reading)}) reads batches of data; {path} is a reference file")
    with agreed("reading the reference file", device):  # a rank that cannot read it fails every rank
        file = read_reference_file(path)
        served, from_images, sources = serve_slots(file, slots)
        key = f"{file.format}:sha256:{file.sha256}"  # the whole file, hashed once per version and process
    if from_images:  # the file's bytes determine the images: its hash keys them, nothing is re-hashed
        read = replace(options, reference_id=key)
        images = _from_data(file.images, from_images, read, device, cache, progress, identity, generated, keyed=True)
        for slot in from_images:
            computed = images.stats[slot.name]
            computed.metadata.update(format=file.format, file=str(path), key="arr_0")
            own = served.get(slot.name)
            if own is not None:  # the file's moments (what the tool scores against), the images' features
                metadata = {**own.metadata, "features_key": "arr_0"}
                computed = Statistics(own.mu, own.sigma, own.n or computed.n, computed.features, metadata)
            served[slot.name] = computed
        key = images.key
    for stats in served.values():
        stats.metadata["sha256"] = file.sha256
    return Reference({n: s.to(device) for n, s in served.items()}, key, file.describe(sources))


def _resolve_data(real: Any, named: Mapping[str, Callable[[], Any]] | None) -> Any:
    if isinstance(real, str) and named is not None and real in named:
        return named[real]()
    if isinstance(real, str) and real in ("train", "val"):
        raise ValueError(f"real={real!r} names the trainer's loaders, which only the callback can reach")
    if callable(real) and not isinstance(real, (Dataset, DataLoader)):
        return real()
    return real


def _from_data(
    data: Any,
    slots: list[Slot],
    options: RealOptions,
    device: torch.device,
    cache: StatsCache | None,
    progress: bool,
    identity: Any,
    generated: int,
    keyed: bool = False,
) -> Reference:
    """The real pass over data (or its cached result); ``keyed``: compute the key also without a cache
    (a file's hash makes it cheap), so that the reference has an identity either way."""
    source = RealSource(data)
    with agreed("reading the real data", device):  # a rank that cannot read fails every rank
        num = count_available(source, options.num_real, options.image_key, options.transform)
    check_memory(slots, generated, num, device)
    key = _key(source, num, slots, options, identity, device) if cache is not None or keyed else None
    if key is None:
        cache = None
        key = f"uncached-{uuid.uuid4().hex}"
    # Read already in this process with the same data, reading and networks (another callback on
    # this trainer, say), else from the disk cache; use_cache=False (no cache) always reads the data.
    known = _RESOLVED.get(key) if cache is not None else None
    stats = known.stats if known is not None else _load_cached(cache, key, slots, device)
    # Agree across ranks: a cache file (or a reference in memory) on one rank but not another must
    # not send one rank into the collective real pass alone.
    if any_rank(stats is None, device):
        stats = extract_real(source, num, slots, options, device, progress=progress)
        _save_cached(cache, key, stats)
        known = None
    span = next(iter(stats.values())).metadata.get("input_span")
    if options.range_check and span is not None:  # also for cached statistics: the span is stored with them
        check_fill(span[0], span[1], options.input_range, REAL)
    described = {"format": "data", **({} if options.reference_id is None else {"reference_id": options.reference_id})}
    reference = known or Reference(stats, key, described)
    if cache is not None:
        _RESOLVED[key] = reference
    return reference


def forget_resolved() -> None:
    """Forget the references resolved in this process: the next resolution reads the disk cache or
    the data again (for tests, and after changing data in place under an unchanged ``reference_id``)."""
    _RESOLVED.clear()


def _key(
    source: RealSource, num: int, slots: list[Slot], options: RealOptions, identity: Any, device: torch.device
) -> str | None:
    """Everything that determines the statistics, hashed exactly (a collective call): the networks and
    their configuration, how the data is read, the metrics, and a hash of every real image and label as
    read, or the user's ``reference_id`` instead of that hash. None, with a warning, when some part
    has no stable identity, so that a stale file can never be served."""
    slot_parts = [
        (
            s.name,
            s.info.name,
            s.info.fingerprint,
            s.info.config,
            str(s.info.input_range),
            s.moments,
            s.keep_features,
            s.output,
            s.classes,
        )
        for s in slots
    ]
    parts = dict(
        slots=slot_parts,
        real_input_range=str(options.input_range),
        image_key=options.image_key,
        num_real=num,
        label_key=options.label_key,
        metrics=identity,
    )
    network = [f"extractor {s.info.name}'s {s.info.unidentified}" for s in slots if s.info.unidentified]
    parts["transform"] = stable_identity(options.transform)
    parts["collate"] = stable_identity(source.collate_fn)
    reading = [
        what
        for what, part in (("transform", parts["transform"]), ("the loader's collate_fn", parts["collate"]))
        if part is None
    ]
    if network or (reading and options.reference_id is None):
        if rank_and_world()[0] == 0:
            fix = (
                "store the extractor's options as plain attributes (numbers, strings, tuples)"
                if network
                else "pass RealData(reference_id='...') (a name you change whenever the data or its reading changes)"
            )
            warnings.warn(
                f"the reference statistics are not cached: {', '.join(network + reading)} has no stable "
                f"identity (a lambda, closure or object without a stable repr), so a cached file could not "
                f"be told from a stale one; {fix} to cache them",
                stacklevel=4,
            )
        return None
    if options.reference_id is not None:
        return cache_key(reference_id=options.reference_id, **parts)
    return cache_key(data=data_fingerprint(source, num, options, device), **parts)


def _load_cached(
    cache: StatsCache | None, key: str, slots: list[Slot], device: torch.device
) -> dict[str, Statistics] | None:
    if cache is None:
        return None
    stats = {}
    for slot in slots:
        entry = cache.load(f"{key}-{slot.name}")
        if entry is None:
            return None
        stats[slot.name] = entry.to(device)
    return stats


def _save_cached(cache: StatsCache | None, key: str, stats: dict[str, Statistics]) -> None:
    if cache is None:
        return
    if rank_and_world()[0] == 0:
        try:
            for name, entry in stats.items():
                cache.save(f"{key}-{name}", entry)
        except OSError as exc:  # read-only or full disk, a file where the folder should be
            warnings.warn(
                f"cannot write the statistics cache in {cache.root} ({exc}); continuing without it", stacklevel=4
            )
    barrier()
