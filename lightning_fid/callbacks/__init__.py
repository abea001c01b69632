"""The Lightning glue: the callback, its schedule, monitor safety, which weights are scored, logging
and history. Everything it computes comes from :mod:`lightning_fid.engine`."""

from lightning_fid.callbacks._callback import GenerativeMetrics
from lightning_fid.callbacks._checkpoint import NoiseAwareCheckpoint
from lightning_fid.callbacks._monitors import FreshEarlyStopping

__all__ = ["FreshEarlyStopping", "GenerativeMetrics", "NoiseAwareCheckpoint"]
