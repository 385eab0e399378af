"""Estimated vision-tower seconds the slice cache and STC-Cacher saved (``vtprune:vision_tower_seconds_saved``).

What was not computed cannot be timed, so the saving is estimated from a rate: tower seconds per patch token at
full cost. The rate is an exponential average over encode calls that computed only at full cost (at least one
slice computed, none selective; cache hits do not disturb it: they take no tower time and are not counted as
computed), each measured as ``EncodeStats.tower_seconds / tokens_computed``. A call then saved
``rate * tokens_total - tower_seconds`` (at least 0), where ``tokens_total`` counts the patch tokens of every slice
it was asked for: cache hits saved all their cost, selective slices what the cacher saved. Before the first
full-cost call the rate is the call's own, counting its selective slices at full cost (so only its cache hits
count as saved). Attention cost grows with tokens per slice, so the rate is exact only for the slice sizes it was
measured on.

Reading ``tower_seconds`` needs the call's device work finished (CUDA events): :meth:`SavedSecondsEstimate.record`
is called once the model has synchronised anyway, so estimating adds no device synchronisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .encoder import EncodeStats

EMA_WEIGHT = 0.3  # weight of the newest full-cost measurement in the seconds-per-token rate


class SavedSecondsEstimate:
    """The running rate, one per tower (a worker's ``WorkerMetrics`` holds it)."""

    def __init__(self) -> None:
        self.seconds_per_token: float | None = None

    def record(self, stats: EncodeStats) -> float:
        """Fold in one encode call and return the seconds it saved (estimate, >= 0)."""
        tower = stats.tower_seconds
        rate = self.seconds_per_token
        if stats.tokens_computed:
            measured = tower / stats.tokens_computed
            if not stats.cacher_selective_slices:
                rate = measured if rate is None else (1 - EMA_WEIGHT) * rate + EMA_WEIGHT * measured
                self.seconds_per_token = rate
            elif rate is None:
                rate = measured
        return max(0.0, rate * stats.tokens_total - tower) if rate is not None else 0.0
