"""The selection contract, for every method: counts, order, floors, determinism, batch invariance, DeepStack."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_vtprune.core import (
    PruneConfig,
    Selection,
    SelectionContractError,
    gather_rows,
    global_row_indices,
    registry,
    select_tokens,
    total_budget,
)
from vllm_vtprune.core.registry import PruningMethod

from .conftest import DTYPES, VARIANT_IDS, VARIANTS, make_config, make_features, videos

CHANNELS = 12


def _features(batch: list[dict], dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    return torch.cat([make_features(v["grid"], CHANNELS, v["seed"], v["kind"], dtype, device) for v in batch])


def _check_selection(sel: Selection, grid: tuple[int, int, int], cfg: PruneConfig, device: str) -> None:
    t, h, w = grid
    budget = total_budget(grid, cfg)
    kept = sel.kept
    assert kept.dtype == torch.int64 and sel.per_slice.dtype == torch.int64
    assert kept.device.type == torch.device(device).type
    assert kept.numel() == budget
    assert bool((kept[1:] > kept[:-1]).all()), "indices must be strictly ascending"
    assert 0 <= int(kept.min()) and int(kept.max()) < t * h * w
    counts = torch.bincount(kept.cpu() // (h * w), minlength=t)
    assert sel.per_slice.cpu().tolist() == counts.tolist()
    assert int(counts.max()) <= h * w
    floor = min(cfg.min_tokens_per_slice, h * w)
    if budget >= t * floor:
        assert int(counts.min()) >= floor


@settings(deadline=None, max_examples=120)
@given(batch=st.lists(videos(), min_size=1, max_size=3), dtype=st.sampled_from(DTYPES))
def test_contract_holds_for_every_method(batch: list[dict], dtype: torch.dtype) -> None:
    grids = [v["grid"] for v in batch]
    configs = [v["config"] for v in batch]
    selections = select_tokens(_features(batch, dtype), grids, configs)
    assert len(selections) == len(batch)
    for sel, grid, cfg in zip(selections, grids, configs):
        _check_selection(sel, grid, cfg, "cpu")


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_contract_on_device(variant, device: str) -> None:
    grids = [(5, 4, 3), (1, 1, 1), (3, 2, 5)]
    configs = [make_config(variant, r, 1) for r in (0.3, 0.5, 0.05)]
    for dtype in DTYPES:
        x = torch.cat([make_features(g, CHANNELS, i, dtype=dtype, device=device) for i, g in enumerate(grids)])
        for sel, grid, cfg in zip(select_tokens(x, grids, configs), grids, configs):
            _check_selection(sel, grid, cfg, device)


@settings(deadline=None, max_examples=80)
@given(
    batch=st.lists(videos(), min_size=2, max_size=4),
    dtype=st.sampled_from(DTYPES),
    channels=st.sampled_from([3, 12]),
)
def test_batch_invariance_and_determinism(batch: list[dict], dtype: torch.dtype, channels: int) -> None:
    """A video selects the same tokens alone, in a batch, in another order, and on a rerun.

    Odd channel counts put videos at unaligned offsets inside the batch tensor."""
    feats = [make_features(v["grid"], channels, v["seed"], v["kind"], dtype) for v in batch]
    grids = [v["grid"] for v in batch]
    configs = [v["config"] for v in batch]
    together = select_tokens(torch.cat(feats), grids, configs)
    again = select_tokens(torch.cat(feats), grids, configs)
    reversed_ = select_tokens(torch.cat(feats[::-1]), grids[::-1], configs[::-1])[::-1]
    for i, (f, grid, cfg) in enumerate(zip(feats, grids, configs)):
        alone = select_tokens(f, [grid], [cfg])[0]
        for other in (together[i], again[i], reversed_[i]):
            assert torch.equal(alone.kept, other.kept)
            assert torch.equal(alone.per_slice, other.per_slice)


@settings(deadline=None, max_examples=40)
@given(batch=st.lists(videos(), min_size=1, max_size=3))
def test_deepstack_rows_follow_the_same_indices(batch: list[dict]) -> None:
    """Gathering a [N, 4C] tensor (main + 3 DeepStack levels side by side) equals gathering each block."""
    grids = [v["grid"] for v in batch]
    x = _features(batch)
    stacked = torch.cat([x, 2 * x + 1, -x, x.square()], dim=1)
    selections = select_tokens(x, grids, [v["config"] for v in batch])
    start = 0
    per_video = []
    for sel, (t, h, w) in zip(selections, grids):
        rows = stacked[start : start + t * h * w]
        start += t * h * w
        gathered = gather_rows(rows, sel)
        blocks = [gather_rows(block, sel) for block in rows.split(CHANNELS, dim=1)]
        assert torch.equal(gathered, torch.cat(blocks, dim=1))
        assert torch.equal(gathered[:, :CHANNELS], rows[:, :CHANNELS][sel.kept])
        per_video.append(gathered)
    everything = stacked.index_select(0, global_row_indices(selections, grids))
    assert torch.equal(everything, torch.cat(per_video))


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_full_retention_keeps_everything(variant) -> None:
    for grid in [(1, 1, 1), (1, 3, 4), (4, 2, 3)]:
        t, h, w = grid
        x = make_features(grid, CHANNELS, 7)
        sel = select_tokens(x, [grid], [make_config(variant, 1.0, 1)])[0]
        assert torch.equal(sel.kept, torch.arange(t * h * w))


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_tiny_retention_keeps_the_floor(variant) -> None:
    method = variant[0]
    for grid, min_k in [((6, 3, 3), 2), ((4, 1, 1), 1), ((1, 2, 2), 1), ((5, 4, 4), 0)]:
        t, h, w = grid
        sel = select_tokens(make_features(grid, CHANNELS, 3), [grid], [make_config(variant, 1e-4, min_k)])[0]
        if method == "none":
            expected = [h * w] * t
        elif method == "evs":  # vLLM's floor is one whole slice; slice 0 has the 255 sentinel
            expected = [h * w] + [0] * (t - 1) if min_k == 0 or t * min_k > h * w else None
        elif method == "vcast" and t == 1:
            expected = [h * w]  # V-CAST leaves single-slice videos untouched
        else:
            expected = [max(min_k, 1)] * t if min_k else None
        if expected is not None:
            assert sel.per_slice.tolist() == expected
        assert sel.kept.numel() == total_budget(grid, make_config(variant, 1e-4, min_k))


@pytest.mark.parametrize("method", ["vcast", "stc", "mssavt", "evs", "none"])
def test_floor_above_slice_size_is_a_clear_error(method: str) -> None:
    cfg = PruneConfig(method=method, retention=0.5, min_tokens_per_slice=5)
    with pytest.raises(ValueError, match="min_tokens_per_slice=5 exceeds the 4 tokens"):
        total_budget((3, 2, 2), cfg)
    with pytest.raises(ValueError, match="min_tokens_per_slice"):
        select_tokens(torch.zeros(12, 4), [(3, 2, 2)], [cfg])


def test_bad_inputs_are_clear_errors() -> None:
    cfg = PruneConfig(method="vcast", retention=0.5)
    with pytest.raises(ValueError, match="rows but the grids"):
        select_tokens(torch.zeros(11, 4), [(3, 2, 2)], [cfg])
    with pytest.raises(ValueError, match="2 grids but 1 configs"):
        select_tokens(torch.zeros(8, 4), [(1, 2, 2), (1, 2, 2)], [cfg])
    with pytest.raises(ValueError, match="stream states"):
        select_tokens(torch.zeros(4, 4), [(1, 2, 2)], [cfg], [None, None])
    with pytest.raises(ValueError, match="2-D float"):
        select_tokens(torch.zeros(4, 4, dtype=torch.long), [(1, 2, 2)], [cfg])
    with pytest.raises(ValueError, match="sizes must all be >= 1"):
        total_budget((0, 2, 2), cfg)
    with pytest.raises(ValueError, match="triple of integers"):
        total_budget((1.5, 2, 2), cfg)
    with pytest.raises(ValueError, match="triple of integers"):
        total_budget((1, 2), cfg)


def test_state_of_another_method_is_rejected() -> None:
    x = make_features((2, 2, 2), CHANNELS, 0)
    state = select_tokens(x, [(2, 2, 2)], [PruneConfig(method="stc", retention=0.5)])[0].state
    assert state is not None and state.method == "stc"
    with pytest.raises(ValueError, match="stream state of method 'stc'"):
        select_tokens(x, [(2, 2, 2)], [PruneConfig(method="mssavt", retention=0.5)], [state])


class _Broken(PruningMethod):
    name = "broken-for-test"
    keep_fn = None

    @classmethod
    def total_budget(cls, grid, cfg):
        t, h, w = grid
        return t * h * w // 2

    @classmethod
    def select(cls, x, grid, budget, cfg, state):
        return cls.keep_fn(x.shape[0], x.shape[1], budget), None


@pytest.mark.parametrize(
    ("keep_fn", "message"),
    [
        (lambda t, hw, b: torch.ones(t, hw, dtype=torch.bool), "kept 8 tokens; total_budget is 4"),
        (lambda t, hw, b: torch.ones(t, hw, dtype=torch.int64), "expected bool"),
        (lambda t, hw, b: torch.ones(t * hw, dtype=torch.bool), "expected bool"),
        (lambda t, hw, b: torch.tensor([[True] * 4, [False] * 4]), "below the floor of 1"),
    ],
)
def test_driver_rejects_a_method_that_breaks_the_contract(monkeypatch, keep_fn, message) -> None:
    monkeypatch.setitem(registry._methods, _Broken.name, _Broken)
    monkeypatch.setattr(_Broken, "keep_fn", staticmethod(keep_fn))
    cfg = PruneConfig(method=_Broken.name)
    with pytest.raises(SelectionContractError, match=message):
        select_tokens(torch.randn(8, 3), [(2, 2, 2)], [cfg])


def test_budget_above_capacity_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(registry._methods, _Broken.name, _Broken)
    monkeypatch.setattr(_Broken, "total_budget", classmethod(lambda cls, grid, cfg: 99))
    with pytest.raises(ValueError, match="asks for 99 tokens but grid"):
        total_budget((2, 2, 2), PruneConfig(method=_Broken.name))


def test_features_are_not_modified_and_states_do_not_alias_them() -> None:
    for method, options in VARIANTS:
        x = make_features((4, 3, 3), CHANNELS, 11)
        before = x.clone()
        sel = select_tokens(x, [(4, 3, 3)], [make_config((method, options), 0.3, 1)])[0]
        assert torch.equal(x, before)
        if sel.state is not None and sel.state.last_slice is not None:
            x.zero_()
            assert sel.state.last_slice.abs().sum() > 0
