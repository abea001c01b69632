"""Paired comparisons need the same groups of the same samples: an anchor that has other ones (a run
resumed with another ``error_bars`` or ``num_samples``) is dropped with a warning, by every callback
that keeps one (:class:`~lightning_fid.GenerativeMetrics`' best evaluation, ``FreshEarlyStopping``,
``NoiseAwareCheckpoint``)."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_warn

from lightning_fid.metrics._jackknife import Estimate


def paired_anchor(anchor: Estimate | None, estimate: Estimate, who: str) -> Estimate | None:
    """``anchor``, or None with a warning when ``estimate`` cannot be paired with it: other groups or
    another sample count (a run resumed with another ``error_bars`` or ``num_samples``). The comparison
    then starts afresh from ``estimate``, instead of every later difference being NaN."""
    if anchor is None or anchor.pairs_with(estimate):
        return anchor
    rank_zero_warn(
        f"{who}: the evaluation it compares against had {anchor.sizes.numel()} groups of "
        f"{int(anchor.sizes.sum())} samples, this one {estimate.sizes.numel()} of {int(estimate.sizes.sum())} "
        "(error_bars or num_samples changed on resume): paired differences are undefined, so the "
        "noise-aware comparison starts afresh from this evaluation"
    )
    return None
