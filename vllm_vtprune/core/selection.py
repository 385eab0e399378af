"""The selection driver: budgets, per-video dispatch to a method, and the contract every method must meet.

``select_tokens`` splits the concatenated post-merger features into videos and runs each video on its own, so a
video's result never depends on the other videos in the batch. A method returns a boolean keep mask [T, H*W]; the
driver derives the sorted kept indices and per-slice counts from it (so indices are ascending by construction)
and checks, for every method:

- exactly ``total_budget(grid, cfg)`` tokens kept;
- every slice keeps at least ``min(min_tokens_per_slice, H*W)`` tokens whenever the budget allows it
  (budget >= T * floor), and no slice more than its H*W tokens (the mask's shape guarantees it).

A violation raises ``SelectionContractError`` naming the method, because a wrong count would misalign vLLM's
placeholder tokens with the embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .budget import Grid, check_grid, split_by_room
from .config import PruneConfig
from .options import short_repr
from .registry import get_method
from .state import StreamState

_ALIGNMENT_BYTES = 64  # see _video_features


class SelectionContractError(RuntimeError):
    """A method returned a keep mask that breaks the selection contract (a bug in that method)."""


@dataclass
class Selection:
    """Tokens kept for one video.

    kept: int64 [total_budget], ascending row indices within the video (t-major, then raster h, w).
    per_slice: int64 [T], kept tokens per temporal slice; sums to total_budget.
    state: the stream state to pass with the stream's next chunk, or None for stateless methods.
    """

    kept: torch.Tensor
    per_slice: torch.Tensor
    state: StreamState | None


def total_budget(grid: Grid, cfg: PruneConfig) -> int:
    """Number of tokens kept for a video of ``grid`` under ``cfg``; a pure function of both.

    vLLM sizes the video placeholder with it before the vision tower runs. Raises ValueError when the config
    cannot be met for this grid (a per-slice floor above the slice size, or a budget above the token count).
    """
    t, h, w = grid = check_grid(grid)
    if cfg.min_tokens_per_slice > h * w:
        raise ValueError(
            f"vtprune.min_tokens_per_slice={short_repr(cfg.min_tokens_per_slice)} exceeds the {h * w} tokens of one "
            f"temporal slice of grid (T, H, W) = {grid}"
        )
    budget = get_method(cfg.method).total_budget(grid, cfg)
    if not 1 <= budget <= t * h * w:
        raise ValueError(f"method {cfg.method!r} asks for {budget} tokens but grid (T, H, W) = {grid} has {t * h * w}")
    return budget


@torch.no_grad()
def select_tokens(
    features: torch.Tensor,
    grids: Sequence[Grid],
    configs: Sequence[PruneConfig],
    states: Sequence[StreamState | None] | None = None,
    budgets: Sequence[int] | None = None,
) -> list[Selection]:
    """Select the kept tokens of each video in a batch.

    features: [sum_i T_i*H_i*W_i, C] post-merger embeddings of the videos, concatenated in order, rows t-major
        then raster (h, w); fp32, bf16 or fp16, on any device. Scores are computed in fp32.
    grids, configs, states: one per video; ``states`` defaults to no state for every video.
    budgets: tokens to keep per video, in ``[1, T*H*W]``; default ``total_budget(grid, cfg)``. A caller that
        sizes placeholders by another rule (the vLLM adapter caps a budget by what vLLM's encoder cache accepts)
        passes its own; methods take any budget.
    Returns one Selection per video, with indices on the features' device.
    """
    grids = [check_grid(g) for g in grids]
    if len(configs) != len(grids):
        raise ValueError(f"got {len(grids)} grids but {len(configs)} configs")
    states = [None] * len(grids) if states is None else list(states)
    if len(states) != len(grids):
        raise ValueError(f"got {len(grids)} grids but {len(states)} stream states")
    budgets = [total_budget(g, c) for g, c in zip(grids, configs)] if budgets is None else list(budgets)
    if len(budgets) != len(grids):
        raise ValueError(f"got {len(grids)} grids but {len(budgets)} budgets")
    if features.ndim != 2 or not features.is_floating_point():
        raise ValueError(f"features must be a 2-D float tensor [rows, C], got {features.dtype} {features.shape}")
    expected_rows = sum(t * h * w for t, h, w in grids)
    if features.shape[0] != expected_rows:
        raise ValueError(f"features have {features.shape[0]} rows but the grids {grids} need {expected_rows}")

    selections = []
    start = 0
    for grid, cfg, state, budget in zip(grids, configs, states, budgets):
        t, h, w = grid
        rows = features[start : start + t * h * w]
        start += t * h * w
        selections.append(_select_video(_video_features(rows, grid), grid, cfg, state, budget))
    return selections


def _video_features(rows: torch.Tensor, grid: Grid) -> torch.Tensor:
    """One video's rows as [T, H*W, C], contiguous and 64-byte aligned.

    Alignment: a video's rows inside the batch start wherever the previous videos end; copying a misaligned video
    (only possible when C * itemsize is not a multiple of 64 bytes) keeps vectorised kernels on the same code path
    as for the video alone, so results cannot depend on the batch.
    """
    t, h, w = grid
    rows = rows.contiguous()
    if rows.data_ptr() % _ALIGNMENT_BYTES:
        rows = rows.clone()
    return rows.view(t, h * w, rows.shape[-1])


def _select_video(x: torch.Tensor, grid: Grid, cfg: PruneConfig, state: StreamState | None, budget: int) -> Selection:
    t, h, w = grid
    if not 1 <= budget <= t * h * w:
        raise ValueError(f"budget {budget} is outside [1, {t * h * w}] for grid (T, H, W) = {grid}")
    if state is not None and state.method != cfg.method:
        raise ValueError(f"stream state of method {state.method!r} cannot be used with method {cfg.method!r}")
    keep, new_state = get_method(cfg.method).select(x, grid, budget, cfg, state)
    per_slice = _check_contract(keep, grid, budget, cfg)
    return Selection(kept=keep.flatten().nonzero().flatten(), per_slice=per_slice, state=new_state)


def _check_contract(keep: torch.Tensor, grid: Grid, budget: int, cfg: PruneConfig) -> torch.Tensor:
    t, h, w = grid
    where = f"method {cfg.method!r} on grid (T, H, W) = {grid}"
    if keep.dtype != torch.bool or tuple(keep.shape) != (t, h * w):
        raise SelectionContractError(
            f"{where} returned a {keep.dtype} mask of shape {tuple(keep.shape)}; expected bool {(t, h * w)}"
        )
    per_slice = keep.sum(1)
    kept = int(per_slice.sum())
    if kept != budget:
        raise SelectionContractError(f"{where} kept {kept} tokens; total_budget is {budget}")
    floor = min(cfg.min_tokens_per_slice, h * w)
    if budget >= t * floor and floor > 0 and bool((per_slice < floor).any()):
        raise SelectionContractError(f"{where} kept {per_slice.tolist()} tokens per slice, below the floor of {floor}")
    return per_slice


def gather_rows(x: torch.Tensor, sel: Selection) -> torch.Tensor:
    """Rows of one video's tensor (main or DeepStack embeddings, or positions) at the kept indices."""
    return x.index_select(0, sel.kept.to(x.device))


def global_row_indices(selections: Sequence[Selection], grids: Sequence[Grid]) -> torch.Tensor:
    """Kept indices of all videos as rows of the concatenated features tensor (offset by the preceding videos)."""
    if len(selections) != len(grids):
        raise ValueError(f"got {len(selections)} selections but {len(grids)} grids")
    if not selections:
        return torch.empty(0, dtype=torch.long)
    parts = []
    offset = 0
    for sel, grid in zip(selections, grids):
        t, h, w = check_grid(grid)
        parts.append(sel.kept + offset)
        offset += t * h * w
    return torch.cat(parts)


def uniform_selection(grid: Grid, budget: int) -> Selection:
    """A deterministic selection of exactly ``budget`` tokens that needs no features: the budget split evenly
    over the slices (earlier slices first), evenly spaced cells within each. The vLLM adapter falls back to it
    when a method fails on a request, because the placeholder was sized before the tower and must be filled."""
    t, h, w = check_grid(grid)
    hw = h * w
    if not 1 <= budget <= t * hw:
        raise ValueError(f"budget {budget} is outside [1, {t * hw}] for grid (T, H, W) = {grid}")
    per_slice = split_by_room(torch.full((t,), hw, dtype=torch.long), budget)
    j = torch.arange(hw)
    cells = ((2 * j + 1) * hw).unsqueeze(0) // (2 * per_slice.clamp_min(1)).unsqueeze(1)  # [T, HW]
    chosen = j.unsqueeze(0) < per_slice.unsqueeze(1)  # the first k_t spaced cells of slice t are distinct
    keep = torch.zeros(t, hw, dtype=torch.bool)
    keep[torch.arange(t).unsqueeze(1).expand(t, hw)[chosen], cells[chosen]] = True
    return Selection(kept=keep.flatten().nonzero().flatten(), per_slice=per_slice, state=None)
