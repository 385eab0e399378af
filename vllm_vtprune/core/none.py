"""``none``: keep every token whatever the retention; the exactness baseline (output equals the unpruned model).

On a partial grid (after a pre-tower stage) it keeps every group present: the tokens are the pre-tower stage's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .registry import PruningMethod, register_method

if TYPE_CHECKING:
    from .budget import Grid
    from .config import PruneConfig
    from .state import StreamState


@register_method
class KeepAll(PruningMethod):
    name = "none"
    partial_grid = True

    @classmethod
    def total_budget(cls, grid: Grid, cfg: PruneConfig) -> int:
        t, h, w = grid
        return t * h * w

    @classmethod
    def two_stage_budget(cls, kept: int, grid_t: int, cfg: PruneConfig) -> int:
        return kept

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
        if valid is not None:
            return valid.clone(), None
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device), None
