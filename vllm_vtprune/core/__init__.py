"""Pure-torch video-token selection for Qwen3-VL: budgets, methods and the selection driver.

No vLLM import here: the vLLM adapter calls ``total_budget`` while building placeholders and ``select_tokens`` on
the merger output, then gathers main and DeepStack rows with the returned indices. Two-stage configs pass
``valid=[kept_mask(kept, grid)]`` with the subset tower's rows (``selection.py``).
"""

from .budget import Grid
from .config import PruneConfig
from .registry import PruningMethod, available_methods, get_method, register_method
from .selection import (
    Selection,
    SelectionContractError,
    gather_rows,
    global_row_indices,
    kept_mask,
    select_tokens,
    stage_budgets,
    total_budget,
)
from .state import StreamState

__all__ = [
    "Grid",
    "PruneConfig",
    "PruningMethod",
    "Selection",
    "SelectionContractError",
    "StreamState",
    "available_methods",
    "gather_rows",
    "get_method",
    "global_row_indices",
    "kept_mask",
    "register_method",
    "select_tokens",
    "stage_budgets",
    "total_budget",
]
