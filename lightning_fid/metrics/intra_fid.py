"""Intra-FID (Miyato & Koyama 2018): the mean of the per-class FIDs."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

from torch import nn

from lightning_fid.metrics.base import Context, Metric, Needs, RunInfo
from lightning_fid.metrics.per_class_fid import check_class_reference, class_fids

if TYPE_CHECKING:
    from lightning_fid.engine._stats import Statistics


class IntraFID(Metric):
    """Intra-FID: the mean FID over all classes (Miyato & Koyama 2018). Logs ``intra_fid``; NaN, with
    a warning, when some class has fewer than 2 generated samples.

    Args:
        key: the logged key (default ``"intra_fid"``).
        extractor: a network to use instead of Inception-v3.
    """

    name = "intra_fid"
    needs = Needs(per_class=True)

    def __init__(self, *, key: str | None = None, extractor: nn.Module | None = None) -> None:
        super().__init__(key=key, extractor=extractor)

    def check_reference(self, real: Statistics, run: RunInfo) -> None:
        check_class_reference(real, run)

    def compute(self, real: Statistics, fake: Statistics, context: Context) -> dict[str, float]:
        values = class_fids(real, fake, context)
        missing = [c for c, v in values.items() if math.isnan(v)]
        if missing:
            warnings.warn(f"intra-FID is NaN: classes {missing[:10]} have fewer than 2 generated samples", stacklevel=2)
        return {self.key: math.fsum(values.values()) / len(values) if values else math.nan}
