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

Partial grids (two stages). After a pre-tower stage (``PruneConfig.pre_tower``) the vision tower ran on
``B1`` merge groups only, ragged over the slices. ``select_tokens(..., valid=...)`` takes, per video, the bool
mask [T, H*W] of those groups and the features of those groups only (the subset tower's rows, ascending
``t*H*W + g``). The driver scatters them into a dense [T, H*W, C] tensor, zero at the absent groups, so that every
method keeps its grid geometry (neighbours, same position in the previous slice) and its full-grid code; the
methods mask their statistics, rankings and allocations with ``valid``. The contract becomes: exactly the budget
(``B2`` of ``stage_budgets``), every kept token inside ``valid``, and a floor of ``min(min_tokens_per_slice, n_t)``
for a slice with ``n_t`` groups present whenever the budget covers the sum of these floors. ``Selection.kept``
stays in the original grid's indices; ``gather_rows``/``global_row_indices`` with ``valid`` map them to rows of
the compact features. With every group present the selection is bit-identical to the full-grid one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .budget import Grid, check_grid, slice_floors, split_with_floor
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

    kept: int64 [total_budget], ascending indices ``t*H*W + g`` of the video's full grid (t-major, then raster
        h, w), also for a partial grid (``valid``): see ``gather_rows`` for rows of compact features.
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
    With a pre-tower stage it is the second stage's budget (``stage_budgets``).
    """
    return stage_budgets(grid, cfg)[-1]


def stage_budgets(grid: Grid, cfg: PruneConfig) -> tuple[int, ...]:
    """``(B,)`` for a single-stage config; ``(B1, B2)`` with a pre-tower stage: B1 groups survive the pre-tower
    stage (and run through the tower), ``B2 = two_stage_budget(B1, T, cfg) <= B1`` reach the LLM."""
    if cfg.pre_tower is None:
        return (_stage_budget(grid, cfg),)
    kept = _stage_budget(grid, cfg.pre_tower)
    _stage_budget(grid, cfg)  # validates the post-tower config against the grid (its floor)
    final = get_method(cfg.method).two_stage_budget(kept, grid[0], cfg)
    if not 1 <= final <= kept:
        raise ValueError(f"method {cfg.method!r} asks for {final} of the {kept} groups kept before the tower")
    return kept, final


def _stage_budget(grid: Grid, cfg: PruneConfig) -> int:
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
    valid: Sequence[torch.Tensor | None] | None = None,
) -> list[Selection]:
    """Select the kept tokens of each video in a batch.

    features: [sum_i rows_i, C] post-merger embeddings of the videos, concatenated in order, rows t-major then
        raster (h, w); ``rows_i = T_i*H_i*W_i``, or the number of groups present for a partial grid (``valid``);
        fp32, bf16 or fp16, on any device. Scores are computed in fp32.
    grids, configs, states: one per video; ``states`` defaults to no state for every video.
    budgets: tokens to keep per video, in ``[1, rows_i]``; default ``total_budget(grid, cfg)`` (``B2`` for a
        two-stage config). A caller that sizes placeholders by another rule (the vLLM adapter caps a budget by
        what vLLM's encoder cache accepts) passes its own; methods take any budget.
    valid: per video, None (a full grid) or a bool [T, H*W] mask of the merge groups present, whose rows alone
        ``features`` holds (ascending ``t*H*W + g``, as ``vision.subset_tower.run_subset_tower`` returns them;
        ``kept_mask`` builds the mask from a pre-tower selection's ``kept``). Required for two-stage configs,
        whose mask must hold exactly the ``B1`` groups of ``stage_budgets``.
    Returns one Selection per video, with indices on the features' device.
    """
    grids = [check_grid(g) for g in grids]
    if len(configs) != len(grids):
        raise ValueError(f"got {len(grids)} grids but {len(configs)} configs")
    states = [None] * len(grids) if states is None else list(states)
    if len(states) != len(grids):
        raise ValueError(f"got {len(grids)} grids but {len(states)} stream states")
    valid = [None] * len(grids) if valid is None else list(valid)
    if len(valid) != len(grids):
        raise ValueError(f"got {len(grids)} grids but {len(valid)} valid masks")
    if features.ndim != 2 or not features.is_floating_point():
        raise ValueError(f"features must be a 2-D float tensor [rows, C], got {features.dtype} {features.shape}")
    valid = [_checked_valid(v, g, c, features.device) for v, g, c in zip(valid, grids, configs)]
    budgets = [total_budget(g, c) for g, c in zip(grids, configs)] if budgets is None else list(budgets)
    if len(budgets) != len(grids):
        raise ValueError(f"got {len(grids)} grids but {len(budgets)} budgets")
    sizes = [math.prod(g) if v is None else int(v.sum()) for g, v in zip(grids, valid)]
    if features.shape[0] != sum(sizes):
        raise ValueError(
            f"features have {features.shape[0]} rows but the grids {grids} need {sum(sizes)}"
            + ("" if all(v is None for v in valid) else f" (groups present per video: {sizes})")
        )

    selections = []
    start = 0
    for grid, cfg, state, budget, mask, size in zip(grids, configs, states, budgets, valid, sizes):
        rows = features[start : start + size]
        start += size
        x = _video_features(rows, grid) if mask is None or size == math.prod(grid) else _scatter(rows, mask)
        selections.append(_select_video(x, grid, cfg, state, budget, mask))
    return selections


def kept_mask(kept: torch.Tensor, grid: Grid) -> torch.Tensor:
    """bool [T, H*W], True at the indices ``kept`` (``t*H*W + g``, e.g. a pre-tower selection's): the ``valid``
    mask of ``select_tokens`` for the features the subset tower computed for these groups."""
    t, h, w = check_grid(grid)
    mask = torch.zeros(t * h * w, dtype=torch.bool, device=kept.device)
    mask[kept] = True
    return mask.view(t, h * w)


def _checked_valid(
    mask: torch.Tensor | None, grid: Grid, cfg: PruneConfig, device: torch.device
) -> torch.Tensor | None:
    """The video's mask on the features' device after checking it against the grid and the config (None: a full
    grid), or ValueError."""
    t, h, w = grid
    if get_method(cfg.method).stage != "post_tower":
        raise ValueError(
            f"select_tokens runs post-tower methods; {cfg.method!r} selects from pixels before the tower "
            "(vllm_vtprune.core.pretower.select_pretower)"
        )
    if mask is None:
        if cfg.pre_tower is not None:
            raise ValueError(
                f"{cfg.method!r} with pre_tower={cfg.pre_tower.method!r} is a two-stage config: its features are "
                "those of the groups kept before the tower; pass valid= (per video, kept_mask(kept, grid) of the "
                "pre-tower selection)"
            )
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (t, h * w):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"valid must be a bool mask of shape {(t, h * w)} for grid (T, H, W) = {grid}, got {shape}")
    if not get_method(cfg.method).partial_grid:
        raise ValueError(f"method {cfg.method!r} does not select from a partial grid (valid=)")
    if cfg.pre_tower is not None:
        present, kept = int(mask.sum()), stage_budgets(grid, cfg)[0]
        if present != kept:
            raise ValueError(
                f"valid holds {present} groups but the pre-tower stage {cfg.pre_tower.method!r} of this config "
                f"keeps {kept} on grid (T, H, W) = {grid}"
            )
    return mask.to(device)


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


def _scatter(rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The rows of the groups present placed on the full grid: [T, H*W, C], zero at the absent groups (a fresh,
    hence aligned, tensor)."""
    x = rows.new_zeros(*valid.shape, rows.shape[-1])
    x[valid] = rows
    return x


def _select_video(
    x: torch.Tensor, grid: Grid, cfg: PruneConfig, state: StreamState | None, budget: int, valid: torch.Tensor | None
) -> Selection:
    method = get_method(cfg.method)
    t, h, w = grid
    size = t * h * w if valid is None else int(valid.sum())
    if not 1 <= budget <= size:
        where = "" if valid is None else f" groups present of the {t * h * w}"
        raise ValueError(f"budget {budget} is outside [1, {size}{where}] for grid (T, H, W) = {grid}")
    if state is not None and state.method != cfg.method:
        raise ValueError(f"stream state of method {state.method!r} cannot be used with method {cfg.method!r}")
    if valid is None:
        keep, new_state = method.select(x, grid, budget, cfg, state)
    else:
        keep, new_state = method.select(x, grid, budget, cfg, state, valid)
    per_slice = _check_contract(keep, grid, budget, cfg, valid)
    return Selection(kept=keep.flatten().nonzero().flatten(), per_slice=per_slice, state=new_state)


def _check_contract(
    keep: torch.Tensor, grid: Grid, budget: int, cfg: PruneConfig, valid: torch.Tensor | None = None
) -> torch.Tensor:
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
    if valid is None:
        floor = min(cfg.min_tokens_per_slice, h * w)
        if budget >= t * floor and floor > 0 and bool((per_slice < floor).any()):
            raise SelectionContractError(
                f"{where} kept {per_slice.tolist()} tokens per slice, below the floor of {floor}"
            )
        return per_slice
    outside = int((keep & ~valid).sum())
    if outside:
        raise SelectionContractError(f"{where} kept {outside} tokens outside the groups present (valid)")
    floors = slice_floors(valid.sum(1), cfg.min_tokens_per_slice, budget)
    if bool((per_slice < floors).any()):
        raise SelectionContractError(
            f"{where} kept {per_slice.tolist()} tokens per slice, below the floors min(min_tokens_per_slice, "
            f"groups present) = {floors.tolist()}"
        )
    return per_slice


def gather_rows(x: torch.Tensor, sel: Selection, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of one video's tensor (main or DeepStack embeddings, or positions) at the kept indices.

    valid: the video's partial-grid mask when ``x`` holds the rows of the groups present only (the subset tower's
    output), as passed to ``select_tokens``."""
    return x.index_select(0, compact_indices(sel.kept, valid).to(x.device))


def compact_indices(kept: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Positions of the grid indices ``kept`` among the groups present (``valid``, ascending): the rows of compact
    features; ``kept`` itself for a full grid (None)."""
    if valid is None:
        return kept
    rank = valid.flatten().to(kept.device).cumsum(0) - 1
    return rank[kept]


def global_row_indices(
    selections: Sequence[Selection],
    grids: Sequence[Grid],
    valid: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Kept indices of all videos as rows of the concatenated features tensor (offset by the preceding videos),
    with ``valid`` as given to ``select_tokens``."""
    if len(selections) != len(grids):
        raise ValueError(f"got {len(selections)} selections but {len(grids)} grids")
    valid = [None] * len(grids) if valid is None else list(valid)
    if len(valid) != len(grids):
        raise ValueError(f"got {len(grids)} grids but {len(valid)} valid masks")
    if not selections:
        return torch.empty(0, dtype=torch.long)
    parts = []
    offset = 0
    for sel, grid, mask in zip(selections, grids, valid):
        t, h, w = check_grid(grid)
        parts.append(compact_indices(sel.kept, mask) + offset)
        offset += t * h * w if mask is None else int(mask.sum())
    return torch.cat(parts)


def uniform_selection(
    grid: Grid, budget: int, valid: torch.Tensor | None = None, *, min_tokens_per_slice: int = 0
) -> Selection:
    """A deterministic selection of exactly ``budget`` tokens that needs no features: the budget split over the
    slices in proportion to the groups present (evenly on a full grid, earlier slices first), after a floor of
    ``min(min_tokens_per_slice, n_t)`` each when the budget covers it; evenly spaced among the groups present
    within each slice. The vLLM adapter falls back to it when a method fails on a request, because the
    placeholder was sized before the tower and must be filled."""
    t, h, w = check_grid(grid)
    hw = h * w
    valid = torch.ones(t, hw, dtype=torch.bool) if valid is None else valid.cpu()
    counts = valid.sum(1)
    if not 1 <= budget <= int(counts.sum()):
        raise ValueError(f"budget {budget} is outside [1, {int(counts.sum())}] for grid (T, H, W) = {grid}")
    per_slice = split_with_floor(counts, budget, min_tokens_per_slice)
    j = torch.arange(hw)
    # The k_t chosen ranks of slice t among its n_t groups present: distinct, evenly spaced.
    ranks = ((2 * j + 1) * counts.unsqueeze(1)) // (2 * per_slice.clamp_min(1)).unsqueeze(1)  # [T, HW]
    chosen_rank = torch.zeros(t, hw + 1, dtype=torch.bool)
    chosen_rank.scatter_(1, torch.where(j < per_slice.unsqueeze(1), ranks, hw), True)
    rank_of_group = (valid.cumsum(1) - 1).clamp_min(0)
    keep = valid & chosen_rank[:, :hw].gather(1, rank_of_group)
    return Selection(kept=keep.flatten().nonzero().flatten(), per_slice=per_slice, state=None)
