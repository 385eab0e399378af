"""Post-tower methods on a partial grid (the second stage of a two-stage config, ``select_tokens(valid=...)``):
the contract under random masks, bit-identity with the full-grid selection when every group is present, each
method's partial-grid rule on hand-made cases, the end-to-end two-stage path and the refusals."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_vtprune.core import (
    PruneConfig,
    Selection,
    SelectionContractError,
    StreamState,
    gather_rows,
    global_row_indices,
    kept_mask,
    registry,
    select_tokens,
    stage_budgets,
    total_budget,
)
from vllm_vtprune.core.budget import allocate_like_vcast
from vllm_vtprune.core.mssavt import trace_selection
from vllm_vtprune.core.pixels import group_view
from vllm_vtprune.core.pretower import select_pretower
from vllm_vtprune.core.registry import PruningMethod
from vllm_vtprune.core.selection import uniform_selection

from .conftest import DTYPES, FEATURE_KINDS, VARIANT_IDS, VARIANTS, make_config, make_features
from .test_core_pretower import make_video

CHANNELS = 12
ALL = st.sampled_from(range(len(VARIANTS)))


@st.composite
def partial_videos(draw: st.DrawFn) -> dict[str, Any]:
    """A random video on a partial grid: mask (at least one group present), config, budget in [1, n]."""
    t, h, w = grid = (draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    density = draw(st.sampled_from([0.15, 0.5, 0.9, 1.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    valid = torch.rand(t, h * w, generator=torch.Generator().manual_seed(seed)) < density
    valid.view(-1)[draw(st.integers(0, t * h * w - 1))] = True
    variant = VARIANTS[draw(ALL)]
    cfg = make_config(variant, 0.5, draw(st.integers(0, min(3, h * w))))
    n = int(valid.sum())
    if variant[0] == "none":
        budget = n
    elif draw(st.booleans()):  # the two-stage rule (B2 of B1 = n)
        budget = registry.get_method(cfg.method).two_stage_budget(n, t, cfg)
    else:
        budget = draw(st.integers(1, n))
    return {
        "grid": grid,
        "valid": valid,
        "config": cfg,
        "budget": budget,
        "seed": seed,
        "kind": draw(st.sampled_from(FEATURE_KINDS)),
    }


def _rows(v: dict[str, Any], dtype: torch.dtype = torch.float32, chunk: int = 0) -> torch.Tensor:
    """The compact features of a partial video: the rows of the groups present, ascending."""
    return make_features(v["grid"], CHANNELS, v["seed"] + chunk, v["kind"], dtype)[v["valid"].flatten()]


def _check_partial(sel: Selection, v: dict[str, Any]) -> None:
    t, h, w = v["grid"]
    valid, budget, cfg = v["valid"], v["budget"], v["config"]
    kept = sel.kept
    assert kept.numel() == budget
    assert bool((kept[1:] > kept[:-1]).all())
    assert bool(valid.flatten()[kept].all()), "kept a token outside the groups present"
    counts = torch.bincount(kept // (h * w), minlength=t)
    assert sel.per_slice.tolist() == counts.tolist()
    floors = valid.sum(1).clamp_max(cfg.min_tokens_per_slice)
    if budget >= int(floors.sum()):
        assert bool((counts >= floors).all()), (counts.tolist(), floors.tolist())


@settings(deadline=None, max_examples=80)
@given(batch=st.lists(partial_videos(), min_size=1, max_size=3), dtype=st.sampled_from(DTYPES))
def test_contract_determinism_and_batch_independence_on_partial_grids(batch, dtype) -> None:
    feats = [_rows(v, dtype) for v in batch]
    args = ([v["grid"] for v in batch], [v["config"] for v in batch])
    budgets, valid = [v["budget"] for v in batch], [v["valid"] for v in batch]
    together = select_tokens(torch.cat(feats), *args, budgets=budgets, valid=valid)
    again = select_tokens(torch.cat(feats), *args, budgets=budgets, valid=valid)
    reverse = select_tokens(torch.cat(feats[::-1]), *(a[::-1] for a in args), budgets=budgets[::-1], valid=valid[::-1])[
        ::-1
    ]
    for i, v in enumerate(batch):
        alone = select_tokens(feats[i], [v["grid"]], [v["config"]], budgets=[v["budget"]], valid=[v["valid"]])[0]
        _check_partial(alone, v)
        for other in (together[i], again[i], reverse[i]):
            assert torch.equal(alone.kept, other.kept) and torch.equal(alone.per_slice, other.per_slice)
        if alone.state is not None:  # the stream's next chunk, on another partial grid with as many groups
            nxt = dict(v, valid=v["valid"].roll(1, 0))
            sel = select_tokens(
                _rows(nxt, dtype, 1), [v["grid"]], [v["config"]], [alone.state], [v["budget"]], [nxt["valid"]]
            )[0]
            _check_partial(sel, nxt)


@settings(deadline=None, max_examples=80)
@given(
    grid=st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 4)),
    variant=ALL,
    retention=st.sampled_from([1.0, 0.5, 0.25, 1e-4]),
    min_k=st.integers(0, 3),
    custom_budget=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(FEATURE_KINDS),
    dtype=st.sampled_from(DTYPES),
)
def test_every_group_present_is_the_full_grid_selection(
    grid, variant, retention, min_k, custom_budget, seed, kind, dtype
) -> None:
    """valid all True runs each method's masked path; it must give the full-grid selection and stream state bit
    for bit, over three chunks of a stream."""
    t, h, w = grid
    min_k = min(min_k, h * w)
    cfg = make_config(VARIANTS[variant], retention, min_k)
    budget = total_budget(grid, cfg)
    if custom_budget and cfg.method != "none":
        budget = max(t * min_k, (budget + 1) // 2)
    everything = torch.ones(t, h * w, dtype=torch.bool)
    full_state = partial_state = None
    for chunk in range(3):
        x = make_features(grid, CHANNELS, seed + chunk, kind, dtype)
        full = select_tokens(x, [grid], [cfg], [full_state], [budget])[0]
        partial = select_tokens(x, [grid], [cfg], [partial_state], [budget], [everything])[0]
        assert torch.equal(full.kept, partial.kept) and torch.equal(full.per_slice, partial.per_slice)
        assert (full.state is None) == (partial.state is None)
        if full.state is not None:
            for name in ("last_slice", "memory_sum"):
                a, b = getattr(full.state, name), getattr(partial.state, name)
                assert (a is None and b is None) or torch.equal(a, b)
            assert full.state.memory_count == partial.state.memory_count
        full_state, partial_state = full.state, partial.state


# ---- per method ---------------------------------------------------------------------------------------------


def test_none_keeps_every_group_present() -> None:
    valid = torch.tensor([[True, False, True], [False, False, True]])
    sel = select_tokens(torch.randn(3, 4), [(2, 1, 3)], [PruneConfig()], budgets=[3], valid=[valid])[0]
    assert sel.kept.tolist() == [0, 2, 5] and sel.per_slice.tolist() == [2, 1]


def test_vcast_allocator_caps_each_slice_at_its_groups_present() -> None:
    # Floors min(1, n_t) = 1 each; B' = 4 split [2, 2]; slice 0 holds 1 group, so its share flows to slice 1.
    alloc = allocate_like_vcast(torch.tensor([0.5, 0.5]), 6, min_k=1, capacity=torch.tensor([1, 8]))
    assert alloc.tolist() == [1, 5]
    # A slice with no group present gets nothing, not even the floor.
    assert allocate_like_vcast(torch.tensor([0.2, 0.8]), 3, min_k=1, capacity=torch.tensor([0, 5])).tolist() == [0, 3]


def test_vcast_activation_min_max_runs_over_the_groups_present() -> None:
    # a = 2 (cos 0, sin 0), b = 3 (cos 120, sin 120), third position absent. The trajectory points at 79.1 degrees:
    # 1 - cos = 0.811 (a), 0.244 (b). Min-max over a, b: 0 and 1, so b scores 1.244 > 0.811. Had the absent zero
    # vector counted as the minimum norm, a would score 0.811 + 2/3 = 1.478 and win.
    b = [3 * math.cos(math.radians(120)), 3 * math.sin(math.radians(120))]
    rows = torch.tensor([[2.0, 0.0], b])
    valid = torch.tensor([[True, True, False]])
    cfg = PruneConfig(method="vcast", retention=0.5)
    assert select_tokens(rows, [(1, 1, 3)], [cfg], budgets=[1], valid=[valid])[0].kept.tolist() == [1]
    # The same two tokens as a full 1x2 grid select the same one.
    assert select_tokens(rows, [(1, 1, 2)], [cfg], budgets=[1])[0].kept.tolist() == [1]


# EVS on T = 3 slices of 1x2 tokens; position 1 is absent from slice 1.
EVS_VALID = torch.tensor([[True, True], [True, False], [True, True]])
EVS_ROWS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # rows of indices 0,1,2,4,5


def test_evs_compares_with_the_last_slice_where_the_position_is_present() -> None:
    # Scores: slice 0: 255, 255; (1, p0) vs (0, p0): 0; (2, p0) vs (1, p0): 1; (2, p1) vs (0, p1), forward
    # filled: 0. Budget 4: 255, 255, 1, then the tie at 0 goes to the lower index 2. Scoring (2, p1) as new (255)
    # would keep index 5, and comparing it with the absent zero vector (1 - 0 = 1) would too.
    cfg = PruneConfig(method="evs", retention=1.0, min_tokens_per_slice=0)
    sel = select_tokens(EVS_ROWS, [(3, 1, 2)], [cfg], budgets=[4], valid=[EVS_VALID])[0]
    assert sel.kept.tolist() == [0, 1, 2, 4]


def test_evs_scores_a_position_present_for_the_first_time_as_new() -> None:
    # Position 1 first appears in slice 1: sentinel 255, kept before the change at position 0 of slice 1.
    valid = torch.tensor([[True, False], [True, True]])
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    cfg = PruneConfig(method="evs", retention=1.0, min_tokens_per_slice=0)
    assert select_tokens(rows, [(2, 1, 2)], [cfg], budgets=[2], valid=[valid])[0].kept.tolist() == [0, 3]


def test_evs_floor_is_capped_by_the_groups_present() -> None:
    # min_k = 2 but slice 1 holds one group: floors [2, 1, 2] = 5 = the budget, so every group present is kept.
    cfg = PruneConfig(method="evs", retention=1.0, min_tokens_per_slice=2)
    sel = select_tokens(EVS_ROWS, [(3, 1, 2)], [cfg], budgets=[5], valid=[EVS_VALID])[0]
    assert sel.per_slice.tolist() == [2, 1, 2]


def _stc(**options) -> PruneConfig:
    return PruneConfig.from_dict(
        {"method": "stc", "min_tokens_per_slice": 1, "options": {"channel_keep_ratio": 1.0, **options}}
    )


def test_stc_splits_the_budget_by_groups_present_after_the_floor() -> None:
    # n = [4, 1, 3], budget 4: floors [1, 1, 1], the last token by room [3, 0, 2] -> slice 0.
    valid = torch.tensor([[True] * 4, [False, True, False, False], [True, True, False, True]])
    sel = select_tokens(torch.randn(8, 4), [(3, 1, 4)], [_stc()], budgets=[4], valid=[valid])[0]
    assert sel.per_slice.tolist() == [2, 1, 1]


def test_stc_statistics_run_over_the_groups_present() -> None:
    # The hand-computed chunk of test_core_stc (a, a, c) with an absent position between b and c: the same
    # choices and memory as on its own 1x3 grid (c first, then a), and the memory mean (2/3, 2/3) of a, a, c.
    rows = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    valid = torch.tensor([[True, True, False, True]])
    one = select_tokens(rows, [(1, 1, 4)], [_stc()], budgets=[1], valid=[valid])[0]
    two = select_tokens(rows, [(1, 1, 4)], [_stc()], budgets=[2], valid=[valid])[0]
    assert one.kept.tolist() == [3] and two.kept.tolist() == [0, 3]
    assert torch.allclose(one.state.memory_sum, torch.tensor([2 / 3, 2 / 3])) and one.state.memory_count == 1


def test_stc_empty_chunk_adds_nothing_to_the_memory() -> None:
    # Per-slice chunks; slice 1 has no group present: two chunk means enter the memory, not three.
    valid = torch.tensor([[True, True], [False, False], [True, False]])
    rows = torch.tensor([[1.0, 3.0], [3.0, 3.0], [5.0, 1.0]])  # slice 0 mean (2, 3), slice 2 mean (5, 1)
    sel = select_tokens(rows, [(3, 1, 2)], [_stc(chunk_slices=1)], budgets=[2], valid=[valid])[0]
    assert sel.state.memory_count == 2
    # Slice 0: channel 1 (variance 0) before channel 0; slice 2: a single token, variances 0, natural order.
    assert torch.allclose(sel.state.memory_sum, torch.tensor([3.0 + 5.0, 2.0 + 1.0]))
    assert sel.per_slice.tolist() == [1, 0, 1]


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_mssavt_temporal_reference_absent_is_not_similar() -> None:
    # T = 2 slices of 1x3; position 1 absent from slice 0. Slice 1 against slice 0: p0 at 153 degrees (cos -0.89),
    # p2 at 163 (cos -0.96), p1 has no reference. The one temporal drop is p0; compared with the absent zero
    # vector (cos 0) p1 would have been the most similar.
    valid = torch.tensor([[True, False, True], [True, True, True]])
    x = torch.zeros(2, 3, 2)
    x[0, 0], x[0, 2] = torch.tensor(_unit(0)), torch.tensor(_unit(90))
    x[1, 0], x[1, 1], x[1, 2] = torch.tensor(_unit(153)), torch.tensor(_unit(45)), torch.tensor(_unit(253))
    cfg = PruneConfig.from_dict({"method": "mssavt", "options": {"temporal": "dtd", "temporal_share": 1.0}})
    trace = trace_selection(x, (2, 1, 3), 4, cfg, valid=valid)
    assert trace.temporal.nonzero().tolist() == [[1, 0]] and trace.rounds == []
    assert trace.keep.tolist() == [[True, False, True], [False, True, True]]


def test_mssavt_spatial_rounds_start_from_the_groups_present() -> None:
    # 1x4 slice, position 2 absent: p3 has no neighbour present, p0 and p1 are each other's neighbours. Pruning
    # one token in round 0 (colour (h + w) % 2 == 0: p0, p2) takes p0, the only candidate present.
    valid = torch.tensor([[True, True, False, True]])
    x = torch.tensor([[_unit(0), _unit(10), [0.0, 0.0], _unit(11)]])
    cfg = PruneConfig.from_dict({"method": "mssavt", "options": {"temporal": "none"}})
    trace = trace_selection(x, (1, 1, 4), 2, cfg, valid=valid)
    assert [r.nonzero()[:, 1].tolist() for r in trace.rounds] == [[0]]
    assert trace.keep.tolist() == [[False, True, False, True]]


def test_mssavt_fallback_ignores_absent_neighbours() -> None:
    # T = 2 slices of 1x5; slice 1 lacks position 3. B = 6 of 9: the temporal stage drops round(0.34 * 3) = 1,
    # slice 1's p1 (identical to slice 0's); p0, p2, p4 are then isolated, so after two empty rounds slice 1
    # falls back to the full-grid MSSAVT over its neighbours present: p0 -0.3 (to p1), p2 -0.6 (to p1), p4 none.
    # p0 goes. Counting the absent p3 as a zero neighbour (cosine 0) would have made p2 the choice.
    angles = [[200, 0, 300, 90, 150], [107.46, 0, 233.13, None, 60]]
    x = torch.tensor([[_unit(a) if a is not None else [0.0, 0.0] for a in row] for row in angles])
    valid = torch.tensor([[True] * 5, [True, True, True, False, True]])
    cfg = PruneConfig.from_dict(
        {"method": "mssavt", "min_tokens_per_slice": 0, "options": {"temporal": "dtd", "temporal_share": 0.34}}
    )
    trace = trace_selection(x, (2, 1, 5), 6, cfg, valid=valid)
    assert trace.temporal.nonzero().tolist() == [[1, 1]]
    assert trace.keep[1].tolist() == [False, False, True, False, True]
    assert [bool(f[1]) for f in trace.fallback] == [False, False, True]


def test_mssavt_stream_state_keeps_the_last_slices_positions_present() -> None:
    cfg = PruneConfig.from_dict({"method": "mssavt", "options": {"temporal": "dtd", "temporal_share": 1.0}})
    valid = torch.tensor([[True, True, True], [True, False, True]])
    first = select_tokens(torch.randn(5, 2), [(2, 1, 3)], [cfg], budgets=[4], valid=[valid])[0]
    assert first.state.last_slice_valid.tolist() == [[True, False, True]]
    assert first.state.last_slice[0, 1].abs().sum() == 0
    # Next chunk, one full slice: p0 and p2 compare with the stored slice; p1, absent there, is not similar.
    last = first.state.last_slice.view(3, 2)
    nxt = torch.stack([-last[0], torch.tensor([0.3, 0.3]), -last[2] + 0.1 * last[0]]).view(1, 3, 2)
    trace = trace_selection(nxt, (1, 1, 3), 2, cfg, first.state)
    assert trace.temporal.nonzero()[:, 1].tolist() in ([0], [2]) and not bool(trace.temporal[0, 1])
    # The full previous slice (no mask) would have offered p1 (cos 0 with the stored zeros) as the most similar.
    unmasked = StreamState(method="mssavt", last_slice=first.state.last_slice)
    assert trace_selection(nxt, (1, 1, 3), 2, cfg, unmasked).temporal.nonzero()[:, 1].tolist() == [1]


# ---- two stages end to end ----------------------------------------------------------------------------------


def _tower(levels: torch.Tensor, channels: int = 16) -> torch.Tensor:
    """A stand-in for the vision tower: a fixed function of each merge group's pixels -> [T, H*W, C]."""
    weight = torch.randn(levels.shape[-1], channels, generator=torch.Generator().manual_seed(0)) / 64
    return torch.tanh((levels.float() - 128) @ weight)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("pre", ["novelty", "dedup"])
def test_two_stage_end_to_end(variant, pre: str) -> None:
    """Pixels -> pre-tower groups (B1) -> tower on them only -> post-tower method keeps B2 of them; a stream's
    second chunk uses the first one's state; rows gathered from the compact output are the right tokens."""
    method, options = variant
    cfg = PruneConfig.from_dict(
        {
            "method": method,
            "retention": 0.5,
            "min_tokens_per_slice": 1,
            "options": options,
            "pre_tower": {"method": pre, "retention": 0.5},
        }
    )
    grid_thw = (5, 6, 8)
    grid = (5, 3, 4)
    b1, b2 = stage_budgets(grid, cfg)
    state = None
    for chunk in range(2):
        pixels = make_video(grid_thw, "sparse_motion", chunk)
        pre_sel = select_pretower(pixels, [grid_thw], [cfg.pre_tower])[0]
        full = _tower(group_view(pixels, grid_thw, 2))  # what the whole tower would give, for checking
        compact = full.flatten(0, 1)[pre_sel.kept]  # what the subset tower gives: rows of the kept groups
        valid = kept_mask(pre_sel.kept, grid)
        sel = select_tokens(compact, [grid], [cfg], [state], valid=[valid])[0]
        assert pre_sel.kept.numel() == b1 and sel.kept.numel() == b2 == total_budget(grid, cfg)
        assert bool(torch.isin(sel.kept, pre_sel.kept).all())
        assert torch.equal(gather_rows(compact, sel, valid), full.flatten(0, 1)[sel.kept])
        floors = valid.sum(1).clamp_max(1)
        assert bool((sel.per_slice >= floors).all())
        if method == "none":
            assert torch.equal(sel.kept, pre_sel.kept)
        state = sel.state


def test_global_rows_of_a_mixed_batch() -> None:
    grids = [(2, 2, 2), (3, 1, 3)]
    valid = [None, torch.tensor([[True, False, True], [False, False, True], [True, True, False]])]
    dense = [torch.randn(8, 4), torch.randn(9, 4)]
    features = torch.cat([dense[0], dense[1][valid[1].flatten()]])
    configs = [PruneConfig(method="vcast", retention=0.5), PruneConfig(method="evs", retention=0.5)]
    selections = select_tokens(features, grids, configs, budgets=[4, 3], valid=valid)
    rows = features[global_row_indices(selections, grids, valid)]
    assert torch.equal(rows, torch.cat([d[s.kept] for d, s in zip(dense, selections)]))


def test_uniform_fallback_on_a_partial_grid() -> None:
    valid = torch.tensor([[True] * 6, [False, True, False, False, False, False], [1, 1, 1, 0, 0, 1]]).bool()
    sel = uniform_selection((3, 2, 3), 5, valid, min_tokens_per_slice=1)
    # Floors [1, 1, 1], the other 2 by room [5, 0, 3]: shares 10/8 and 6/8, so one each to slices 0 and 2.
    assert sel.per_slice.tolist() == [2, 1, 2]
    assert bool(valid.flatten()[sel.kept].all()) and sel.kept.numel() == 5
    # Evenly spaced among the groups present: slice 0 ranks 1, 4 of 6; slice 2 ranks 1, 3 of its 4 (positions 1, 5).
    assert sel.kept.tolist() == [1, 4, 7, 13, 17]
    full = uniform_selection((3, 2, 3), 7)
    assert torch.equal(full.kept, uniform_selection((3, 2, 3), 7, torch.ones(3, 6, dtype=torch.bool)).kept)


# ---- refusals -----------------------------------------------------------------------------------------------

TWO_STAGE = PruneConfig.from_dict(
    {"method": "vcast", "retention": 0.5, "pre_tower": {"method": "novelty", "retention": 0.5}}
)


def test_two_stage_without_valid_is_refused() -> None:
    with pytest.raises(ValueError, match="is a two-stage config.*pass valid="):
        select_tokens(torch.randn(8, 3), [(2, 2, 2)], [TWO_STAGE])


@pytest.mark.parametrize(
    ("valid", "rows", "message"),
    [
        (torch.ones(2, 4, dtype=torch.long), 8, "valid must be a bool mask of shape \\(2, 4\\)"),
        (torch.ones(8, dtype=torch.bool), 8, "valid must be a bool mask of shape \\(2, 4\\)"),
        (
            torch.ones(2, 4, dtype=torch.bool),
            8,
            "valid holds 8 groups but the pre-tower stage 'novelty' of this config keeps 4",
        ),
        (
            torch.tensor([[True, True, False, False], [True, False, False, True]]),
            5,
            "features have 5 rows but the grids .* need 4 \\(groups present per video: \\[4\\]\\)",
        ),
    ],
)
def test_bad_masks_are_clear_errors(valid, rows: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_tokens(torch.randn(rows, 3), [(2, 2, 2)], [TWO_STAGE], valid=[valid])


def test_budget_above_the_groups_present_and_mask_count_are_clear_errors() -> None:
    valid = torch.tensor([[True, False, False, False], [False, True, False, False]])
    cfg = PruneConfig(method="stc", retention=0.5)
    with pytest.raises(ValueError, match="budget 3 is outside \\[1, 2 groups present of the 8\\]"):
        select_tokens(torch.randn(2, 3), [(2, 2, 2)], [cfg], budgets=[3], valid=[valid])
    with pytest.raises(ValueError, match="1 grids but 2 valid masks"):
        select_tokens(torch.randn(2, 3), [(2, 2, 2)], [cfg], budgets=[1], valid=[valid, valid])


class _FullGridOnly(PruningMethod):
    name = "full-grid-only-for-test"

    @classmethod
    def total_budget(cls, grid, cfg):
        return 1

    @classmethod
    def select(cls, x, grid, budget, cfg, state):
        keep = torch.zeros(x.shape[:2], dtype=torch.bool)
        keep.view(-1)[0] = True
        return keep, None


class _Leaky(_FullGridOnly):
    name = "leaky-for-test"
    partial_grid = True

    @classmethod
    def select(cls, x, grid, budget, cfg, state, valid=None):
        return super().select(x, grid, budget, cfg, state)


def test_method_without_partial_grid_support_is_refused(monkeypatch) -> None:
    monkeypatch.setitem(registry._methods, _FullGridOnly.name, _FullGridOnly)
    cfg = PruneConfig(method=_FullGridOnly.name)
    assert select_tokens(torch.randn(4, 3), [(1, 2, 2)], [cfg])[0].kept.tolist() == [0]  # full grids still work
    with pytest.raises(ValueError, match="does not select from a partial grid"):
        select_tokens(torch.randn(2, 3), [(1, 2, 2)], [cfg], valid=[torch.tensor([[False, True, True, False]])])


def test_driver_rejects_a_keep_mask_outside_the_groups_present(monkeypatch) -> None:
    monkeypatch.setitem(registry._methods, _Leaky.name, _Leaky)
    cfg = PruneConfig(method=_Leaky.name)
    with pytest.raises(SelectionContractError, match="kept 1 tokens outside the groups present"):
        select_tokens(torch.randn(2, 3), [(1, 2, 2)], [cfg], valid=[torch.tensor([[False, True, True, False]])])
    # Floors min(1, n_t) = [1, 1] within the budget of 2, but slice 0 keeps nothing.
    valid = torch.tensor([[False, True, True, False], [True, False, False, True]])
    monkeypatch.setattr(
        _Leaky,
        "select",
        classmethod(
            lambda cls, x, g, b, c, s, v=None: (
                torch.tensor([[False, False, False, False], [True, False, False, True]]),
                None,
            )
        ),
    )
    with pytest.raises(SelectionContractError, match="below the floors .* = \\[1, 1\\]"):
        select_tokens(torch.randn(4, 3), [(2, 2, 2)], [cfg], budgets=[2], valid=[valid])
