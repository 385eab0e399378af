"""Token budgets: grid checks, ratio-to-count rules, and integer splits of a total over temporal slices.

A budget must be a pure function of the grid and the config, because vLLM sizes the video placeholder before the
vision tower runs. Ratios become counts with Python's ``round()`` (half to even), as V-CAST's official code does
(``int(round(T * HW * R))``); EVS truncates with ``int()`` as vLLM does. Each method says which rule it uses.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from .ranking import ranks_from_order, stable_order

Grid = tuple[int, int, int]
"""(T, H, W) of the post-merger token grid: T temporal slices of H*W LLM tokens each."""


def check_grid(grid: Sequence[int]) -> Grid:
    """Return ``grid`` as a tuple of three positive ints, or raise ValueError."""
    try:
        t, h, w = (operator.index(v) for v in grid)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"grid must be a (T, H, W) triple of integers, got {grid!r}") from exc
    if min(t, h, w) < 1:
        raise ValueError(f"grid sizes must all be >= 1, got (T, H, W) = {(t, h, w)}")
    return t, h, w


def ratio_budget(capacity: int, retention: float) -> int:
    """``clip(round(capacity * retention), 1, capacity)`` with Python's round (half to even)."""
    return max(1, min(capacity, round(capacity * retention)))


def slice_floors(counts: torch.Tensor, min_k: int, total: int) -> torch.Tensor:
    """Per-slice floor ``min(min_k, n_t)`` of slices holding ``counts`` [T] (int64) tokens, or zeros when ``total``
    cannot cover them all. On a full grid (``n_t = H*W >= min_k``) this is V-CAST's ``min_k`` rule."""
    floors = counts.clamp_max(min_k)
    return floors if total >= int(floors.sum()) else torch.zeros_like(floors)


def allocate_like_vcast(weights: torch.Tensor, total: int, *, min_k: int, capacity: int | torch.Tensor) -> torch.Tensor:
    """V-CAST's ``_allocate_budget_per_frame``, vectorised: split ``total`` over slices by ``weights`` [T].

    Each slice gets ``min_k`` (0 for all if ``total < T * min_k``); the remaining ``B'`` is shared as
    ``floor(w_t * B')`` capped at ``capacity``. The leftover goes to the slice with the largest fractional part
    ``w_t * B' - floor(w_t * B')`` until that slice is full, then to the next one (ties: lowest index). This is
    the official loop's behaviour: it never lowers a remainder it has served, so the leftover piles onto one
    slice instead of one token per slice as textbook largest-remainder would. The official overshoot branch is
    unreachable (the floors never sum above ``B'``) and is not reproduced. Returns int64 [T] summing to
    ``min(total, sum of capacities)``.

    ``capacity`` is H*W (the official case) or, on a partial grid, the tokens present in each slice (int64 [T]);
    a slice's floor is then ``min(min_k, capacity_t)`` (``slice_floors``) and the shares of full slices flow to
    the others through the leftover rule.
    """
    t = weights.shape[0]
    capacity = torch.as_tensor(capacity, dtype=torch.long, device=weights.device).expand(t)
    total = max(0, min(total, int(capacity.sum())))
    alloc = slice_floors(capacity, min_k, total)
    remaining = total - int(alloc.sum())
    if remaining <= 0:
        return alloc
    w = weights.float().clamp_min(0.0)
    w = torch.where(w.sum() > 0, w, torch.ones_like(w))
    raw = w / w.sum().clamp_min(1e-6) * remaining
    floors = torch.floor(raw)
    alloc = alloc + torch.minimum(floors.long(), capacity - alloc)
    room = capacity - alloc
    frac = torch.where(room > 0, raw - floors, torch.full_like(raw, -1.0))
    order = torch.argsort(frac, descending=True, stable=True)
    room_in_order = room[order]
    before = torch.cumsum(room_in_order, 0) - room_in_order
    give_in_order = (total - alloc.sum() - before).clamp_min(0).minimum(room_in_order)
    return alloc.scatter_add(0, order, give_in_order)


def split_by_room(room: torch.Tensor, total: int | torch.Tensor) -> torch.Tensor:
    """Split ``total`` over slices in proportion to ``room`` [T] (int64), never exceeding it.

    Exact integer largest-remainder: ``floor(room_t * total / sum(room))`` plus one token for the slices with the
    largest remainders (ties: lowest index). Requires ``total <= sum(room)``; the leftover is then smaller than the
    number of slices with a non-zero remainder, each of which still has room.
    """
    total = torch.as_tensor(total, dtype=torch.long, device=room.device)
    room_sum = room.sum()
    scaled = room * total
    base = scaled // room_sum.clamp_min(1)
    remainder = scaled - base * room_sum
    rank = ranks_from_order(stable_order(remainder, descending=True))
    return base + (rank < total - base.sum()).long()


def split_with_floor(room: torch.Tensor, total: int, min_k: int) -> torch.Tensor:
    """``slice_floors(room, min_k, total)`` to each slice, the rest ``split_by_room`` over what room is left.

    With equal rooms this is ``split_by_room(room, total)`` exactly (both give ``total // T`` each and one more
    to the first ``total % T`` slices); with ragged rooms it keeps the floor that a plain proportional split
    could break. Requires ``total <= sum(room)``."""
    floors = slice_floors(room, min_k, total)
    return floors + split_by_room(room - floors, total - int(floors.sum()))


def allocate_proportional(weights: torch.Tensor, total: int, *, floor: int, capacity: torch.Tensor) -> torch.Tensor:
    """Split ``total`` over slices: ``floor`` each, the rest in proportion to ``weights`` [T] (int64, >= 0), never
    above ``capacity`` [T] (int64, each >= ``floor``); exact integer arithmetic.

    Water-filling: a slice whose exact share ``w_t * R / sum(w)`` reaches its room is filled and the others share
    what remains, until no share overflows; then textbook largest remainder (``floor(share)`` each, one more token
    for the largest remainders, ties: lowest index). Slices of zero weight get nothing while a weighted slice has
    room; when no slice with room has weight, the rest is shared in proportion to room. Returns int64 [T] summing
    to ``min(total, sum(capacity))``. Weights times ``total`` must fit in int64 (pixel L1 masses of any realistic
    video do, by six orders of magnitude).
    """
    alloc = torch.full_like(capacity, floor)
    room = capacity - alloc
    remaining = min(total, int(capacity.sum())) - int(alloc.sum())
    active = room > 0
    while remaining > 0:
        w = torch.where(active, weights, 0)
        if int(w.sum()) == 0:
            w = torch.where(active, room, 0)
        total_weight = int(w.sum())
        share_num = w * remaining  # exact share of slice t: share_num[t] / total_weight
        full = active & (share_num >= room * total_weight)
        if bool(full.any()):
            remaining -= int(room[full].sum())
            alloc = alloc + torch.where(full, room, 0)
            room = torch.where(full, 0, room)
            active = active & ~full
            continue
        base = share_num // total_weight
        remainder = torch.where(active, share_num - base * total_weight, -1)
        alloc = alloc + base
        leftover = remaining - int(base.sum())  # below the number of slices with a remainder, each with room
        rank = ranks_from_order(stable_order(remainder, descending=True))
        alloc = alloc + (rank < leftover).long()
        remaining = 0
    return alloc
