"""``dedup``: drop merge groups whose pixels exactly repeat an earlier group, then fill the budget by novelty.

A pre-tower method (``stage = "pre_tower"``), on the 8-bit pixel levels of each merge group (``pixels.py``).

Sources: PixelPrune (arXiv 2604.00886, ``OPPO-Mente-Lab/PixelPrune``; vLLM issue #39708 / PR #45106): exact
(``tau = 0``) pixel de-duplication of patches before the ViT, the first occurrence kept; RLT (arXiv 2411.05222):
a patch repeating the same patch of the previous frame is dropped, so a run keeps its first patch.

Duplicates (exact equality of all ``D`` levels of a group, so pixel-identical slices are all duplicates):

- ``scope="temporal"`` (default): group g of slice t repeats group g of slice t-1 (RLT with tau = 0; by
  transitivity a run of identical groups keeps only its first). Positions are preserved: the LLM still sees the
  content at its place, once.
- ``scope="video"``: the group repeats any earlier group of the video (row order: t-major, raster), at any
  position: also de-duplicates flat backgrounds and scenes that come back (PixelPrune's exact mode compares with
  causal spatial neighbours; this compares with every earlier group, via ``torch.unique`` over the groups).

Exact budget (a pure function of the grid and settings, ``novelty.pretower_budget``): the number of duplicates
depends on the pixels, so dedup is a priority, not a count. Slice t's share of the budget is capped at
``max(#non-duplicates_t, min_k)`` and weighted by the change mass of its non-duplicates; within each slice
non-duplicates come first, by novelty (``novelty``'s step 4, same ``reference`` option). Hence a duplicate is kept
only to meet the per-slice floor, or when every non-duplicate of the video is kept and the budget still has room
(then duplicates fill it by novelty, split over slices in proportion to their remaining room). At a retention at
or below the video's non-duplicate fraction no duplicate is kept beyond the floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from .novelty import NoveltyOptions, PixelNoveltyMethod, select_novel, temporal_change
from .registry import register_method

if TYPE_CHECKING:
    from .config import PruneConfig


@dataclass(frozen=True)
class DedupOptions(NoveltyOptions):
    scope: Literal["temporal", "video"] = "temporal"  # which earlier groups count as the first occurrence


def video_duplicates(levels: torch.Tensor) -> torch.Tensor:
    """bool [T, G]: the group's levels equal those of an earlier group of the video (t-major, raster order)."""
    t, g, d = levels.shape
    _, group_id = torch.unique(levels.reshape(t * g, d), dim=0, return_inverse=True)
    order = torch.arange(t * g, device=levels.device)
    first = torch.full((t * g,), t * g, device=levels.device).scatter_reduce(0, group_id, order, reduce="amin")
    return (first[group_id] < order).view(t, g)


@register_method
class Dedup(PixelNoveltyMethod):
    name = "dedup"
    Options = DedupOptions

    @classmethod
    def select_slices(cls, x: torch.Tensor, budget: int, cfg: PruneConfig) -> torch.Tensor:
        options = cls.options(cfg)
        change = temporal_change(x)
        if options.scope == "temporal":
            duplicate = torch.cat([torch.zeros(1, x.shape[1], dtype=torch.bool, device=x.device), change == 0])
        else:
            duplicate = video_duplicates(x)
        return select_novel(x, budget, cfg.min_tokens_per_slice, options.reference, duplicate, change)
