"""``evs``: Efficient Video Sampling as vLLM implements it, re-implemented without importing vLLM.

Source: ``vllm/multimodal/video_prune/evs.py`` (vLLM 0.32.0).

- Budget: ``max(H*W, int(T*H*W*retention))``, vLLM's ``compute_retained_tokens_count`` with pruning rate
  ``q = 1 - retention`` (truncation by ``int()``, not rounding).
- Score: ``d[t, p] = 1 - cos(x[t, p], x[t-1, p])``; slice 0 gets ``d = 255`` so it is always kept.
- Keep the global top-``budget`` by a stable descending sort over the flattened [T, H*W] scores (ties: lower
  index first).

Deliberate differences from vLLM:

- Scores are fp32; vLLM computes the cosine in the embeddings' dtype, so bf16 inputs may break near-ties
  differently.
- Per-slice floor: when ``min_tokens_per_slice > 0`` and the budget allows it, each slice first keeps its
  ``floor`` highest-scoring tokens (slice 0: the first ones in raster order) and the global order fills the rest.
  vLLM has no floor (a slice may keep nothing); ``min_tokens_per_slice=0`` reproduces it exactly.

Partial grid (second stage after a pre-tower stage; ``valid`` [T, H*W]): a token is compared with the same
position in the last earlier slice where that position is present (forward fill), which is the previous slice
whenever the pre-tower stage kept it there; a position present for the first time scores 255, like slice 0 (it
is new to the LLM). Forward fill rather than "new" for every gap: a pre-tower stage drops static positions, so
"new" would give the sentinel to most tokens after a gap and leave EVS nothing to rank; the pre-tower ``novelty``
method's default reference (``last_kept``) is the same rule on pixels. The floor is ``min(min_k, n_t)`` of the
``n_t`` groups present; the global order runs over the groups present.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .budget import slice_floors
from .ranking import stable_order, top_k_mask
from .registry import PruningMethod, register_method
from .similarity import row_norms, rows_cosine, shifted_row_cosines

if TYPE_CHECKING:
    from .budget import Grid
    from .config import PruneConfig
    from .state import StreamState

FIRST_SLICE_SCORE = 255.0  # vLLM's sentinel: above any 1 - cos (at most 2)


@register_method
class EfficientVideoSampling(PruningMethod):
    name = "evs"
    partial_grid = True

    @classmethod
    def total_budget(cls, grid: Grid, cfg: PruneConfig) -> int:
        t, h, w = grid
        return max(h * w, int(t * h * w * cfg.retention))

    @classmethod
    def select(
        cls,
        x: torch.Tensor,
        grid: Grid,
        budget: int,
        cfg: PruneConfig,
        state: StreamState | None,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        t, hw, _ = x.shape
        flat = x.view(t * hw, -1)
        norms = row_norms(flat)
        dissimilarity = torch.full((t, hw), FIRST_SLICE_SCORE, device=x.device)
        if t > 1:
            dissimilarity[1:] = (1.0 - shifted_row_cosines(flat, [hw], norms)[0]).view(t - 1, hw)
        counts = torch.full((t,), hw, device=x.device)
        if valid is not None:
            dissimilarity = _forward_filled(dissimilarity, flat, norms, valid)
            counts = valid.sum(1)
        floors = slice_floors(counts, cfg.min_tokens_per_slice, budget)
        reserved = top_k_mask(dissimilarity, floors, eligible=valid).flatten() if bool(floors.any()) else None
        order = stable_order(dissimilarity.flatten(), descending=True, eligible=reserved)
        keep = torch.zeros(t * hw, dtype=torch.bool, device=x.device)
        keep[order[:budget]] = True
        return keep.view(t, hw), None


def _forward_filled(
    dissimilarity: torch.Tensor, flat: torch.Tensor, norms: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """EVS scores on a partial grid: each token present against the last earlier slice where its position is
    present (``dissimilarity`` already holds the previous slice's), 255 where there is none, -inf where absent
    (last in the global order, which only reaches the budget <= the tokens present)."""
    t, hw = valid.shape
    slices = torch.arange(t, device=valid.device).unsqueeze(1)
    last_present = torch.where(valid, slices, -1).cummax(0).values  # last slice <= t where the position is
    reference = torch.cat([last_present.new_full((1, hw), -1), last_present[:-1]])  # ... < t
    gap = valid & (reference >= 0) & (reference < slices - 1)
    if bool(gap.any()):
        rows = gap.flatten().nonzero().flatten()
        previous = (reference * hw + torch.arange(hw, device=valid.device)).flatten()[rows]
        cosine = rows_cosine(flat[rows], flat[previous], norms[rows])
        dissimilarity = dissimilarity.flatten().index_put((rows,), 1.0 - cosine).view(t, hw)
    dissimilarity = torch.where(reference < 0, FIRST_SLICE_SCORE, dissimilarity)
    return torch.where(valid, dissimilarity, float("-inf"))
