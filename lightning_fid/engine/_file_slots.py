"""Which of a reference file's statistics serve which slot, and refusals before anything runs.

:func:`check_file_for_metrics` runs when the callback (or Evaluator) is made, before any network is
loaded: every metric must find its statistics in the file, or real images there (an ADM batch's
``arr_0``), and the standard networks' dimensions must fit. :func:`serve_slots` runs when the reference
is resolved, on the built slots: it checks each served statistic against the network that reads it
(dimension, and the network the format implies) and says which slots are computed from the images.
"""

from __future__ import annotations

from collections.abc import Iterable

from lightning_fid.engine._formats import ANY, ROLES, ReferenceFile, read_reference_file
from lightning_fid.engine._slots import Slot, standard_slot_name
from lightning_fid.engine._stats import Statistics, check_identity
from lightning_fid.metrics.base import Metric


def role_of(slot: Slot) -> str:
    """The standard slot name a slot's features stand for: its own name for a standard network; for a
    user's network, read from its extractor name (DINOv2 / CLIP / else Inception, and the output suffix)."""
    if slot.standard:
        return slot.name
    name = slot.info.name
    network = next((n for n in ("dinov2", "clip") if name.startswith(n)), "inception")
    output = next((o for o in ("spatial", "logits") if name.endswith(f"-{o}")), None)
    return network + (f"-{output}" if output else "")


def _describe(file: ReferenceFile) -> str:
    return f"{file.path} ({file.format})"


def _no_images(file: ReferenceFile, what: str) -> ValueError:
    return ValueError(
        f"{_describe(file)} holds statistics only (means and covariances), no images; {what} need the real "
        "images themselves: pass an image folder or a Dataset, or an ADM batch .npz with arr_0 images"
    )


def _missing(file: ReferenceFile, role: str, who: str) -> ValueError:
    what, where = ROLES.get(role, (f"{role} features", "the real images"))
    held = ", ".join(sorted(k for r, k in file.keys.items() if r != "images")) or "nothing usable"
    return ValueError(f"{_describe(file)} holds {held} but no statistics of {what}, which {who} reads; use {where}")


def _per_class(file: ReferenceFile, who: str) -> ValueError:
    held = "one mean and covariance" if ANY in file.moments else "statistics and no class labels"
    return ValueError(
        f"{_describe(file)} holds {held}; {who} need real images (per-class metrics: labelled ones, "
        "RealData(source, label_key=...))"
    )


def check_file_for_metrics(path: str, metrics: Iterable[Metric], feature_extractor: bool = False) -> ReferenceFile:
    """Refuse, naming the file, the key and the metric, a reference file that cannot serve ``metrics``.

    Args:
        path: the reference file (``real=``).
        metrics: the run's metric objects.
        feature_extractor: whether the run replaces Inception's pool features by its own network (its
            dimension is then checked when the reference is resolved, on the built network).

    Raises:
        ValueError: per-class metrics; metrics that need features without images in the file; a
            metric whose statistics the file lacks (``mu_s`` for sFID, ``fd_dinov2`` for FD_DINOv2)
            with no images to compute them from; statistics of another dimension than its standard
            network's; one mean and covariance for metrics on two networks.
    """
    from lightning_fid.engine._networks import standard_identity

    file = read_reference_file(path)
    metrics = list(metrics)
    per_class = [m.key for m in metrics if m.needs.per_class]
    if per_class:
        raise _per_class(file, str(per_class))
    features = [m.key for m in metrics if m.needs.features]
    if features and file.images is None:
        raise _no_images(file, str(features))
    roles: dict[str, list[Metric]] = {}
    for m in metrics:
        if m.needs.moments and m.extractor is None:  # a metric's own network: checked on its slot
            replaced = feature_extractor and m.needs.network == "inception" and m.needs.output == "features"
            roles.setdefault("inception" if replaced else standard_slot_name(m), []).append(m)
    if ANY in file.moments and len(roles) > 1:
        names = {role: [m.key for m in ms] for role, ms in roles.items()}
        raise ValueError(
            f"{_describe(file)} holds one mean and covariance (mu, sigma), for one network, but the metrics read "
            f"{len(roles)} ({names}); give a file per network's statistics, or images"
        )
    for role, ms in roles.items():
        stats = file.moments.get(ANY, file.moments.get(role))
        who = "/".join(m.key for m in ms)
        if stats is None:
            if file.images is None:
                raise _missing(file, role, who)
            continue
        if feature_extractor and role == "inception":
            continue  # the user's network: its dimension is known once it is built
        m = ms[0]
        name, dim = standard_identity(m.needs.network, m.needs.output)
        if stats.dim != dim:
            key = file.keys.get(ANY, file.keys.get(role))
            raise ValueError(
                f"{file.path} ({file.format}: {key}) holds {stats.dim}-d statistics but {name} gives {dim}-d "
                f"features, which {who} reads: they are another network's; for {who} use "
                f"{ROLES.get(role, (None, 'matching statistics'))[1]}"
            )
    return file


def serve_slots(file: ReferenceFile, slots: list[Slot]) -> tuple[dict[str, Statistics], list[Slot], dict[str, str]]:
    """The file's statistics for each slot they fit, the slots computed from its images, and per slot
    what served it (a key, ``arr_0``, or both: moments from the key, features from the images).

    Raises:
        ValueError: as :func:`check_file_for_metrics`, per slot; or a served statistic of another
            dimension or network than the slot's (naming the file, key and network).
    """
    served: dict[str, Statistics] = {}
    from_images: list[Slot] = []
    sources: dict[str, str] = {}
    moment_slots = [s for s in slots if s.moments]
    if ANY in file.moments and len(moment_slots) > 1:
        raise ValueError(
            f"{_describe(file)} holds one mean and covariance (mu, sigma), which serve Fréchet distances on one "
            f"network; these metrics read {[s.info.name for s in moment_slots]}"
        )
    for slot in slots:
        if slot.classes:
            raise _per_class(file, f"per-class metrics ({slot.name})")
        role = ANY if ANY in file.moments else role_of(slot)
        stats = file.moments.get(role) if slot.moments else None
        needs_images = (slot.moments and stats is None) or slot.keep_features
        if needs_images and file.images is None:
            if slot.keep_features:
                raise _no_images(file, f"metrics on {slot.info.name} features (kernel or k-NN)")
            raise _missing(file, role_of(slot), f"the {slot.name} slot ({slot.info.name})")
        if stats is not None:
            key = file.keys[role]
            check_identity(
                stats,
                slot.info.name,
                slot.info.feature_dim,
                slot.info.fingerprint,
                f"{file.path} ({file.format}: {key})",
                slot.info.config,
                hint=file.notes.get(role),
            )
            served[slot.name] = Statistics(stats.mu, stats.sigma, stats.n, metadata={**stats.metadata})
            served[slot.name].classes = dict(stats.classes)
            sources[slot.name] = key
        if needs_images:
            from_images.append(slot)
            sources[slot.name] = f"{sources[slot.name]} + arr_0 features" if slot.name in sources else "arr_0"
    return served, from_images, sources
