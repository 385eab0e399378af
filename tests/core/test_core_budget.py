"""Budgets (per-method formulas, rounding), the integer allocators and the stable top-k."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_vtprune.core import PruneConfig, total_budget
from vllm_vtprune.core.budget import allocate_like_vcast, allocate_proportional, ratio_budget, split_by_room
from vllm_vtprune.core.ranking import top_k_mask


def _cfg(method: str, retention: float, min_k: int = 1) -> PruneConfig:
    return PruneConfig(method=method, retention=retention, min_tokens_per_slice=min_k)


@pytest.mark.parametrize(
    ("method", "grid", "retention", "min_k", "expected"),
    [
        # V-CAST / MSSAVT: max(T*min_k, clip(round(T*HW*R), 1, T*HW)), Python round = half to even.
        ("vcast", (32, 16, 16), 0.25, 1, 2048),  # 8192 * 0.25
        ("vcast", (5, 1, 1), 0.5, 0, 2),  # round(2.5) = 2 (half to even), not 3
        ("vcast", (7, 1, 1), 0.5, 0, 4),  # round(3.5) = 4
        ("vcast", (4, 2, 2), 0.01, 0, 1),  # round(0.16) = 0, clipped to 1
        ("vcast", (4, 2, 2), 0.01, 2, 8),  # the floor wins: 4 slices * 2
        ("vcast", (1, 4, 4), 0.1, 1, 16),  # T = 1 is left untouched, as in the official code
        ("mssavt", (5, 1, 1), 0.5, 0, 2),
        ("mssavt", (1, 4, 4), 0.1, 1, 2),  # round(1.6) = 2: MSSAVT prunes single slices
        ("mssavt", (3, 3, 3), 1e-4, 3, 9),
        # STC: T * max(min_k, clip(round(R*HW), 1, HW)).
        ("stc", (4, 4, 4), 0.3, 1, 20),  # round(4.8) = 5 per slice
        ("stc", (4, 4, 4), 0.125, 1, 8),  # round(2.0) = 2
        ("stc", (3, 2, 5), 0.25, 0, 6),  # round(2.5) = 2 per slice (half to even)
        ("stc", (4, 4, 4), 1e-4, 0, 4),  # at least one per slice
        ("stc", (4, 4, 4), 1e-4, 3, 12),
        # EVS: max(HW, int(T*HW*R)), truncation as vLLM.
        ("evs", (4, 2, 2), 0.3, 0, 4),  # int(4.8) = 4
        ("evs", (4, 2, 2), 0.2, 0, 4),  # int(3.2) = 3 < one slice
        ("evs", (10, 2, 2), 0.33, 0, 13),  # int(13.2)
        ("evs", (10, 2, 2), 0.99, 5 - 1, 39),  # int(39.6); the floor does not change EVS's total
        ("none", (3, 5, 7), 0.01, 1, 105),
    ],
)
def test_total_budget(method, grid, retention, min_k, expected) -> None:
    assert total_budget(grid, _cfg(method, retention, min_k)) == expected


def test_total_budget_is_pure() -> None:
    cfg = _cfg("mssavt", 0.37)
    assert {total_budget((8, 6, 5), cfg) for _ in range(5)} == {total_budget((8, 6, 5), _cfg("mssavt", 0.37))}


def test_ratio_budget_rounds_half_to_even_and_clips() -> None:
    assert [ratio_budget(10, r) for r in (0.05, 0.15, 0.25, 0.35)] == [
        1,
        2,
        2,
        4,
    ]  # round(0.5)=0 -> clipped to 1
    assert ratio_budget(10, 1.0) == 10


def _official_vcast_allocation(weights: torch.Tensor, total: int, min_k: int, max_k: int) -> list[int]:
    """Transcription of V-CAST's `_allocate_budget_per_frame` loop (the reference the vectorised code must match)."""
    t = weights.shape[0]
    total = max(0, min(total, t * max_k))
    min_k = max(0, min(min_k, max_k))
    min_k_eff = 0 if total < t * min_k else min_k
    alloc = [min_k_eff] * t
    remaining = total - sum(alloc)
    if remaining <= 0:
        return alloc
    w = weights.float().clamp_min(0.0)
    if float(w.sum()) <= 0.0:
        w = torch.ones_like(w)
    w = w / w.sum().clamp_min(1e-6)
    raw = w * float(remaining)
    extra = torch.floor(raw).long().clamp_max(max_k - min_k_eff)
    alloc = [a + int(e) for a, e in zip(alloc, extra)]
    remaining = total - sum(alloc)
    frac = (raw - torch.floor(raw)).tolist()
    frac = [-1.0 if a >= max_k else f for a, f in zip(alloc, frac)]
    for _ in range(remaining):
        idx = max(range(t), key=lambda i: (frac[i], -i))  # argmax, first index on ties
        if frac[idx] < 0:
            break
        alloc[idx] += 1
        if alloc[idx] >= max_k:
            frac[idx] = -1.0
    return alloc


def test_vcast_allocation_on_explicit_weights() -> None:
    # min_k 1 each (3 tokens), 7 left: raw = 3.5, 2.1, 1.4 -> floors 3, 2, 1 -> 9; one leftover to the largest
    # fractional part (0.5, slice 0).
    assert allocate_like_vcast(torch.tensor([0.5, 0.3, 0.2]), 10, min_k=1, capacity=5).tolist() == [5, 3, 2]
    # Dyadic weights: raw = 10 * (0.25, 0.375, 0.375) = 2.5, 3.75, 3.75 -> floors 2, 3, 3 -> 8; the leftover 2 both
    # go to slice 1 (fraction 0.75, tied with slice 2, lowest index wins), as the official loop does.
    assert allocate_like_vcast(torch.tensor([0.25, 0.375, 0.375]), 10, min_k=0, capacity=10).tolist() == [
        2,
        5,
        3,
    ]
    # Same with capacity 4: slice 1 fills up after one token, the next largest fraction (slice 2) gets the other.
    assert allocate_like_vcast(torch.tensor([0.25, 0.375, 0.375]), 10, min_k=0, capacity=4).tolist() == [
        2,
        4,
        4,
    ]
    # Total below T * min_k: no floor at all, everything by weight (raw 1.6, 0.4 -> 1, 0; leftover to slice 0).
    assert allocate_like_vcast(torch.tensor([0.8, 0.2]), 2, min_k=2, capacity=4).tolist() == [2, 0]
    # Zero weights are treated as uniform: 1 each, then raw 0.5 each -> floors 0, and the 2 leftover tokens pile
    # onto slice 0 (equal fractions, lowest index) up to its capacity 3.
    assert allocate_like_vcast(torch.zeros(4), 6, min_k=1, capacity=3).tolist() == [3, 1, 1, 1]


@settings(deadline=None, max_examples=200)
@given(
    weights=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=12),
    capacity=st.integers(1, 20),
    min_k=st.integers(0, 4),
    total=st.integers(0, 300),
    softmax=st.booleans(),
)
def test_vcast_allocation_matches_the_official_loop(weights, capacity, min_k, total, softmax) -> None:
    w = torch.tensor(weights)
    if softmax:
        w = torch.softmax(w / 0.7, dim=0)
    min_k = min(min_k, capacity)
    got = allocate_like_vcast(w, total, min_k=min_k, capacity=capacity).tolist()
    assert got == _official_vcast_allocation(w, total, min_k, capacity)
    assert sum(got) == min(total, len(weights) * capacity)


def test_split_by_room_on_explicit_rooms() -> None:
    # 10 over rooms 3, 3, 4 (sum 10): exactly the rooms.
    assert split_by_room(torch.tensor([3, 3, 4]), 10).tolist() == [3, 3, 4]
    # 5 over rooms 4, 4, 2: 2, 2, 1 exactly.
    assert split_by_room(torch.tensor([4, 4, 2]), 5).tolist() == [2, 2, 1]
    # 4 over rooms 3, 3, 3: 4/3 each -> floors 1, 1, 1 and one leftover to the lowest index (equal remainders).
    assert split_by_room(torch.tensor([3, 3, 3]), 4).tolist() == [2, 1, 1]
    # 3 over rooms 5, 0, 1: 15/6 = 2.5 and 3/6 = 0.5 -> floors 2, 0, 0; remainders 3, 0, 3 -> slice 0 first.
    assert split_by_room(torch.tensor([5, 0, 1]), 3).tolist() == [3, 0, 0]
    assert split_by_room(torch.tensor([0, 0]), 0).tolist() == [0, 0]


@settings(deadline=None, max_examples=200)
@given(rooms=st.lists(st.integers(0, 50), min_size=1, max_size=10), data=st.data())
def test_split_by_room_is_proportional_and_exact(rooms, data) -> None:
    room = torch.tensor(rooms)
    total = data.draw(st.integers(0, sum(rooms)))
    got = split_by_room(room, total)
    assert int(got.sum()) == total
    assert bool((got <= room).all()) and bool((got >= 0).all())
    if sum(rooms):
        share = room.double() * total / sum(rooms)
        assert bool(((got.double() - share).abs() < 1).all())


def test_top_k_mask_breaks_ties_by_lower_index() -> None:
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert top_k_mask(scores, 2).tolist() == [
        [False, True, True, False, False],
        [True, True, False, False, False],
    ]
    assert top_k_mask(scores, torch.tensor([1, 3]), largest=False).tolist() == [
        [True, False, False, False, False],
        [True, True, True, False, False],
    ]
    eligible = torch.tensor([[True, False, True, True, True], [False, True, False, True, False]])
    # Row 0: eligible 0, 2, 3, 4 -> best two are 2 and 4 (3.0 each). Row 1: only two eligible, k = 3 gives both.
    assert top_k_mask(scores, torch.tensor([2, 3]), eligible=eligible).tolist() == [
        [False, False, True, False, True],
        [False, True, False, True, False],
    ]


@settings(deadline=None, max_examples=100)
@given(rows=st.integers(1, 4), cols=st.integers(1, 9), data=st.data())
def test_top_k_mask_matches_a_sorted_reference(rows, cols, data) -> None:
    values = data.draw(st.lists(st.integers(0, 3), min_size=rows * cols, max_size=rows * cols))
    k = data.draw(st.lists(st.integers(0, cols), min_size=rows, max_size=rows))
    scores = torch.tensor(values, dtype=torch.float32).view(rows, cols)
    mask = top_k_mask(scores, torch.tensor(k))
    for r in range(rows):
        best = sorted(range(cols), key=lambda c: (-values[r * cols + c], c))[: k[r]]
        assert sorted(best) == mask[r].nonzero().flatten().tolist()


def _water_filling(weights: list[int], total: int, floor: int, capacity: list[int]) -> list[int]:
    """Reference for ``allocate_proportional`` with exact fractions, one slice at a time."""
    alloc = [floor] * len(weights)
    remaining = min(total, sum(capacity)) - sum(alloc)
    active = [c > floor for c in capacity]
    while remaining > 0:
        w = [wt if a else 0 for wt, a in zip(weights, active)]
        if sum(w) == 0:
            w = [c - x if a else 0 for c, x, a in zip(capacity, alloc, active)]
        shares = [Fraction(wt * remaining, sum(w)) for wt in w]
        full = [i for i, a in enumerate(active) if a and shares[i] >= capacity[i] - alloc[i]]
        if full:
            for i in full:
                remaining -= capacity[i] - alloc[i]
                alloc[i], active[i] = capacity[i], False
            continue
        base = [int(sh) if a else 0 for sh, a in zip(shares, active)]
        leftover = remaining - sum(base)
        order = sorted((i for i in range(len(w)) if active[i]), key=lambda i: (-(shares[i] - base[i]), i))
        for j, i in enumerate(order):
            alloc[i] += base[i] + (j < leftover)
        remaining = 0
    return alloc


@settings(deadline=None, max_examples=300)
@given(
    data=st.data(),
    t=st.integers(1, 8),
    floor=st.integers(0, 3),
)
def test_allocate_proportional_is_exact_water_filling(data, t: int, floor: int) -> None:
    capacity = data.draw(st.lists(st.integers(floor, floor + 6), min_size=t, max_size=t))
    weights = data.draw(st.lists(st.one_of(st.just(0), st.integers(0, 10**9)), min_size=t, max_size=t), label="weights")
    total = data.draw(st.integers(t * floor, sum(capacity) + 3), label="total")
    got = allocate_proportional(
        torch.tensor(weights), total, floor=floor, capacity=torch.tensor(capacity, dtype=torch.long)
    )
    assert got.tolist() == _water_filling(weights, total, floor, capacity)
    assert int(got.sum()) == min(total, sum(capacity))
    assert all(floor <= a <= c for a, c in zip(got.tolist(), capacity))


def test_allocate_proportional_examples() -> None:
    cap = torch.tensor([10, 10, 10])
    assert allocate_proportional(torch.tensor([1, 1, 2]), 8, floor=0, capacity=cap).tolist() == [2, 2, 4]
    assert allocate_proportional(torch.tensor([1, 1, 1]), 8, floor=0, capacity=cap).tolist() == [3, 3, 2]
    # the heavy slice is full; the other two share what is left
    assert allocate_proportional(torch.tensor([100, 1, 1]), 16, floor=1, capacity=cap).tolist() == [10, 3, 3]
    # no weight anywhere: in proportion to room
    room = torch.tensor([2, 6, 10])
    assert allocate_proportional(torch.tensor([0, 0, 0]), 9, floor=0, capacity=room).tolist() == [1, 3, 5]
