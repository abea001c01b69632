"""The engine: sampling, quantisation, extraction, accumulation, merge, reference statistics, cache
and scoring. It never imports Lightning; the callback (:mod:`lightning_fid.callbacks`) and the CLI
are thin layers over it, and scripts can use :class:`Evaluator` directly."""

from lightning_fid.engine._accumulators import FeatureBank, FeatureMoments
from lightning_fid.engine._cache import StatsCache
from lightning_fid.engine._card import format_card
from lightning_fid.engine._evaluator import Evaluator
from lightning_fid.engine._export import export_reference
from lightning_fid.engine._formats import ReferenceFile, read_reference_file
from lightning_fid.engine._images import to_uint8
from lightning_fid.engine._labels import LabelPolicy
from lightning_fid.engine._real import RealData
from lightning_fid.engine._reference import Reference, resolve_reference
from lightning_fid.engine._scoring import Scorer
from lightning_fid.engine._slots import Slot, build_slots
from lightning_fid.engine._stats import Statistics, load_statistics

__all__ = [
    "Evaluator",
    "FeatureBank",
    "FeatureMoments",
    "LabelPolicy",
    "RealData",
    "Reference",
    "ReferenceFile",
    "Scorer",
    "Slot",
    "Statistics",
    "StatsCache",
    "build_slots",
    "export_reference",
    "format_card",
    "load_statistics",
    "read_reference_file",
    "resolve_reference",
    "to_uint8",
]
