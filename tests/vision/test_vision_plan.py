"""The vision layer's pure parts, without a tower: the encode planner, the selective layout, the subset plan, and
the seconds-saved estimate."""

from __future__ import annotations

import pytest
import torch

from vllm_vtprune.vision import CacherConfig, EncodeStats
from vllm_vtprune.vision.estimate import EMA_WEIGHT, SavedSecondsEstimate
from vllm_vtprune.vision.plan import Role, grid_runs, plan_encode, plan_subset, selective_layout

CACHER = CacherConfig(True, 0.25, 2)
OFF = CacherConfig()


def _keys(*ids: int) -> torch.Tensor:
    """Slice keys ``[T, 2]``: slice t gets key (ids[t], 0)."""
    return torch.tensor([[i, 0] for i in ids], dtype=torch.int64)


def _roles(plan) -> list[str]:
    return [s.role.value for s in plan.slices]


def test_roles_without_cache():
    plan = plan_encode([(5, 4, 4), (3, 2, 2)], [CACHER, OFF], [None, None], [False, False], None)
    assert _roles(plan) == ["full", "selective", "full", "selective", "full", "full", "full", "full"]
    assert [plan.slices[i].source for i in (1, 3)] == [0, 2]  # each selective slice's reference
    assert plan.groups == {(4, 4, 0.25): [1, 3]}
    assert plan.computed == list(range(8)) and plan.tokens_computed == plan.tokens_total == 5 * 16 + 3 * 4
    # exact by definition (ratio 1, interval 1) or one slice: no selective slice
    exact = [CacherConfig(True, 1.0, 2), CacherConfig(True, 0.25, 1), CACHER]
    plan = plan_encode([(4, 2, 2), (4, 2, 2), (1, 2, 2)], exact, [None] * 3, [False] * 3, None)
    assert plan.count(Role.SELECTIVE) == 0
    forced = plan_encode([(4, 2, 2)], exact[:1], [None], [False], None, force_selective=True)
    assert _roles(forced) == ["full", "selective", "full", "selective"]


def test_cache_keys_hits_and_recomputed_references():
    keys = _keys(10, 11, 12, 13, 14)
    plan = plan_encode([(5, 4, 4)], [CACHER], [keys], [True], set())
    assert [s.key for s in plan.slices[:2]] == [("x", 4, 4, 10, 0), ("stc", 4, 4, 0.25, 11, 0, 10, 0)]
    # everything cached but slice 3 (selective): its reference 2 is recomputed, once
    cached = {s.key for s in plan.slices} - {plan.slices[3].key}
    again = plan_encode([(5, 4, 4)], [CACHER], [keys], [True], cached)
    assert _roles(again) == ["cached", "cached", "full", "selective", "cached"]
    assert again.references_recomputed == 1 and again.slices[3].source == 2
    # interval 3, both dependants of reference 0 miss: counted once
    cfg = CacherConfig(True, 0.25, 3)
    plan = plan_encode([(3, 2, 2)], [cfg], [_keys(1, 2, 3)], [True], set())
    again = plan_encode([(3, 2, 2)], [cfg], [_keys(1, 2, 3)], [True], {plan.slices[0].key})
    assert _roles(again) == ["full", "selective", "selective"] and again.references_recomputed == 1
    # no keys, not asked for, or the cache off: no keys at all
    for keys_, use, cache in (([None], [True], set()), ([keys], [False], set()), ([keys], [True], None)):
        assert all(s.key is None for s in plan_encode([(5, 4, 4)], [OFF], keys_, use, cache).slices)
    with pytest.raises(ValueError, match=r"slice_keys\[0\] must be \[T=5, 2\]"):
        plan_encode([(5, 4, 4)], [OFF], [_keys(1, 2)], [True], set())


def test_identical_keys_are_computed_once():
    """Video 1 repeats video 0's first two slices: its slice 0 is an alias of video 0's slice 0, and its selective
    slice 1 (same key as video 0's slice 1) too; a new selective slice refers to the alias's source."""
    plan = plan_encode([(2, 2, 2), (3, 2, 2)], [CACHER, CACHER], [_keys(1, 2), _keys(1, 2, 3)], [True, True], set())
    assert _roles(plan) == ["full", "selective", "alias", "alias", "full"]
    assert [plan.slices[i].source for i in (2, 3)] == [0, 1]
    plan = plan_encode([(2, 2, 2), (2, 2, 2)], [CACHER, CACHER], [_keys(1, 2), _keys(1, 3)], [True, True], set())
    assert _roles(plan) == ["full", "selective", "alias", "selective"]
    assert plan.slices[3].source == 0  # video 1's reference is an alias: the slice computing it


def test_selective_layout_puts_each_groups_references_first():
    grid = [(3, 2, 2), (4, 4, 4), (2, 2, 2)]
    plan = plan_encode(grid, [OFF, CACHER, CACHER], [None] * 3, [False] * 3, None)
    # slices: 0-2 video 0 (full), 3-6 video 1 (f s f s), 7-8 video 2 (f s)
    layout = selective_layout(plan)
    assert layout.full == [3, 5, 7, 0, 1, 2]
    (g1, m1), (g2, m2) = layout.groups
    assert (g1.height, g1.width, g1.ratio, g1.ref_slots, m1) == (4, 4, 0.25, [0, 1], [4, 6])
    assert (g2.height, g2.width, g2.ref_slots, m2) == (2, 2, [2], [8])
    assert g1.num_tokens == 16 and g1.num_slices == 2


def test_grid_runs():
    assert grid_runs([(2, 2), (2, 2), (4, 4), (2, 2)]) == [[2, 2, 2], [1, 4, 4], [1, 2, 2]]
    assert grid_runs([]) == []


def test_subset_plan():
    """Two videos of 2x2 merge groups per slice (unit 4): rows, sequences, and where copies come from."""
    grids = [[3, 4, 4], [2, 2, 4]]  # 4 and 2 groups per slice
    kept = [torch.tensor([0, 3, 5, 9, 10]), torch.tensor([1, 2, 3])]
    plan = plan_subset(grids, kept, [None, None], 4, torch.device("cpu"))
    rows = plan.table_rows.view(-1, 4)
    assert rows[:, 0].tolist() == [0, 12, 4, 4, 8, 16 + 4, 16 + 0, 16 + 4]  # group g of a slice: rows 4g..4g+3
    assert rows[0].tolist() == [0, 1, 2, 3]
    assert plan.seq_lens == [8, 4, 8, 4, 8] and plan.out_rows is None
    # slice 2 of video 0 repeats slice 0: its rows are slice 0's, at the same rank
    kept = [torch.tensor([0, 3, 5, 8, 11])]
    plan = plan_subset(grids[:1], kept, [torch.tensor([-1, -1, 0])], 4, torch.device("cpu"))
    assert plan.seq_lens == [8, 4] and plan.table_rows.numel() == 3 * 4
    assert plan.out_rows.tolist() == [0, 1, 2, 0, 1]


class _Timer:
    def __init__(self, seconds: float) -> None:
        self.value = seconds

    def seconds(self) -> dict[str, float]:
        return {"tower": self.value}


def _stats(total: int, computed: int, seconds: float, selective: int = 0) -> EncodeStats:
    return EncodeStats(tokens_total=total, tokens_computed=computed, cacher_selective_slices=selective,
                       timer=_Timer(seconds) if computed else None)


def test_saved_seconds_estimate():
    est = SavedSecondsEstimate()
    assert est.record(_stats(100, 0, 0.0)) == 0.0  # all hits, no rate yet: nothing to go by
    assert est.record(_stats(100, 100, 1.0)) == pytest.approx(0.0, abs=1e-12)
    assert est.seconds_per_token == pytest.approx(0.01)
    assert est.record(_stats(100, 0, 0.0)) == pytest.approx(1.0)  # all hits: the full cost saved
    assert est.record(_stats(100, 50, 0.3)) == pytest.approx((1 - EMA_WEIGHT) * 0.01 * 100 + EMA_WEIGHT * 0.6 - 0.3)
    rate = est.seconds_per_token
    assert est.record(_stats(100, 100, 0.4, selective=1)) == pytest.approx(rate * 100 - 0.4)  # rate unchanged
    assert est.seconds_per_token == rate
    assert est.record(_stats(100, 100, 2.0 * rate * 100, selective=1)) == 0.0  # never negative
    # before any full-cost call, a selective call's own rate: only cache hits count as saved
    assert SavedSecondsEstimate().record(_stats(100, 80, 0.8, selective=2)) == pytest.approx(0.2)
