"""``evs``: Efficient Video Sampling as vLLM implements it, re-implemented without importing vLLM.

Source: ``vllm/multimodal/video_prune/evs.py`` (vLLM 0.32.0; research note §1.3.3 and §5.1).

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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .ranking import stable_order, top_k_mask
from .registry import PruningMethod, register_method
from .similarity import row_norms, shifted_row_cosines

if TYPE_CHECKING:
    from .budget import Grid
    from .config import PruneConfig
    from .state import StreamState

FIRST_SLICE_SCORE = 255.0  # vLLM's sentinel: above any 1 - cos (at most 2)


@register_method
class EfficientVideoSampling(PruningMethod):
    name = "evs"

    @classmethod
    def total_budget(cls, grid: Grid, cfg: PruneConfig) -> int:
        t, h, w = grid
        return max(h * w, int(t * h * w * cfg.retention))

    @classmethod
    def select(
        cls, x: torch.Tensor, grid: Grid, budget: int, cfg: PruneConfig, state: StreamState | None
    ) -> tuple[torch.Tensor, None]:
        t, hw, _ = x.shape
        flat = x.view(t * hw, -1)
        norms = row_norms(flat)
        dissimilarity = torch.full((t, hw), FIRST_SLICE_SCORE, device=x.device)
        if t > 1:
            dissimilarity[1:] = (1.0 - shifted_row_cosines(flat, [hw], norms)[0]).view(t - 1, hw)
        floor = min(cfg.min_tokens_per_slice, hw)
        reserved = top_k_mask(dissimilarity, floor).flatten() if floor and budget >= t * floor else None
        order = stable_order(dissimilarity.flatten(), descending=True, eligible=reserved)
        keep = torch.zeros(t * hw, dtype=torch.bool, device=x.device)
        keep[order[:budget]] = True
        return keep.view(t, hw), None
