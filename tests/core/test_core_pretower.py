"""Pre-tower methods (``novelty``, ``dedup``) and their driver: the selection contract, de-duplication, flashes,
the last-kept reference, repeated slices, batch independence."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_vtprune.core import PruneConfig, select_tokens, total_budget
from vllm_vtprune.core.dedup import video_duplicates
from vllm_vtprune.core.pixels import group_view
from vllm_vtprune.core.pretower import select_pretower

COLUMNS = 6  # values per patch row in these tests (Qwen3-VL has 1536); 2 per channel
PRE_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("novelty", {}),
    ("novelty", {"reference": "previous"}),
    ("dedup", {}),
    ("dedup", {"scope": "video"}),
    ("dedup", {"scope": "video", "reference": "previous"}),
]
KINDS = ("noise", "static", "palette", "sparse_motion")


def make_video(grid_thw: tuple[int, int, int], kind: str, seed: int) -> torch.Tensor:
    """uint8 pixel rows [T*Hp*Wp, COLUMNS] of a video of ``grid_thw`` patches.

    noise: i.i.d. levels; static: one slice repeated; palette: every group one of 3 patterns (exact duplicates in
    space and time); sparse_motion: a static slice where a few groups change in every slice."""
    t, hp, wp = grid_thw
    g, d = hp * wp // 4, 4 * COLUMNS
    gen = torch.Generator().manual_seed(seed)
    if kind == "noise":
        groups = torch.randint(0, 256, (t, g, d), generator=gen)
    elif kind == "static":
        groups = torch.randint(0, 256, (1, g, d), generator=gen).expand(t, g, d)
    elif kind == "palette":
        palette = torch.randint(0, 256, (3, d), generator=gen)
        groups = palette[torch.randint(0, 3, (t, g), generator=gen)]
    else:
        groups = torch.randint(0, 256, (1, g, d), generator=gen).repeat(t, 1, 1)
        moving = torch.rand(t, g, generator=gen) < 0.2
        groups[moving] = torch.randint(0, 256, (int(moving.sum()), d), generator=gen)
    return groups.to(torch.uint8).reshape(t * hp * wp, COLUMNS)


def config(variant: tuple[str, dict[str, Any]], retention: float, min_k: int) -> PruneConfig:
    method, options = variant
    return PruneConfig(method=method, retention=retention, min_tokens_per_slice=min_k, options=options)


@st.composite
def pre_videos(draw: st.DrawFn) -> dict[str, Any]:
    grid_thw = (draw(st.integers(1, 6)), 2 * draw(st.integers(1, 4)), 2 * draw(st.integers(1, 4)))
    g = grid_thw[1] * grid_thw[2] // 4
    retention = draw(st.one_of(st.sampled_from([1.0, 0.5, 0.25, 1e-4]), st.floats(1e-3, 1.0)))
    return {
        "grid_thw": grid_thw,
        "config": config(draw(st.sampled_from(PRE_VARIANTS)), retention, draw(st.integers(0, min(3, g)))),
        "pixels": make_video(grid_thw, draw(st.sampled_from(KINDS)), draw(st.integers(0, 2**31 - 1))),
    }


@settings(deadline=None, max_examples=150)
@given(video=pre_videos())
def test_contract_exact_budget_floor_and_repeated_slices(video: dict) -> None:
    grid_thw, cfg, pixels = video["grid_thw"], video["config"], video["pixels"]
    t, h, w = grid_thw[0], grid_thw[1] // 2, grid_thw[2] // 2
    sel = select_pretower(pixels, [grid_thw], [cfg])[0]
    assert sel.kept.numel() == int(sel.per_slice.sum()) == total_budget((t, h, w), cfg)
    assert torch.all(sel.kept[1:] > sel.kept[:-1])
    floor = min(cfg.min_tokens_per_slice, h * w)
    if sel.kept.numel() >= t * floor:
        assert torch.all(sel.per_slice >= floor)
    if t == 1:
        assert sel.kept.numel() == h * w
    # repeated slices point at an earlier computed slice with the same kept groups and pixels
    keep = torch.zeros(t * h * w, dtype=torch.bool)
    keep[sel.kept] = True
    keep = keep.view(t, h * w)
    levels = group_view(pixels, grid_thw)
    for s, source in enumerate(sel.slice_source.tolist()):
        if source >= 0:
            assert source < s and sel.slice_source[source] == -1
            assert torch.equal(keep[s], keep[source]) and torch.equal(levels[s][keep[s]], levels[source][keep[s]])
    computed = sel.computed()
    assert torch.equal(sel.pixel_rows(), (computed[:, None] * 4 + torch.arange(4)).reshape(-1))
    assert torch.equal(sel.positions()[:, 0] * h * w + sel.positions()[:, 1] * w + sel.positions()[:, 2], sel.kept)


@settings(deadline=None, max_examples=40)
@given(batch=st.lists(pre_videos(), min_size=1, max_size=3))
def test_deterministic_and_batch_independent(batch: list[dict]) -> None:
    pixels = torch.cat([v["pixels"] for v in batch])
    grids = [v["grid_thw"] for v in batch]
    configs = [v["config"] for v in batch]
    together = select_pretower(pixels, grids, configs)
    again = select_pretower(pixels.clone(), torch.tensor(grids), configs)
    reverse = select_pretower(torch.cat([v["pixels"] for v in batch[::-1]]), grids[::-1], configs[::-1])[::-1]
    for i, v in enumerate(batch):
        alone = select_pretower(v["pixels"], [v["grid_thw"]], [v["config"]])[0]
        for other in (together[i], again[i], reverse[i]):
            assert torch.equal(alone.kept, other.kept) and torch.equal(alone.slice_source, other.slice_source)


@pytest.mark.parametrize("scope", ["temporal", "video"])
def test_dedup_drops_identical_groups_while_the_budget_allows(scope: str) -> None:
    grid_thw = (6, 8, 8)
    t, g = 6, 16
    pixels = make_video(grid_thw, "sparse_motion", 5)
    levels = group_view(pixels, grid_thw)
    if scope == "temporal":
        duplicate = torch.zeros(t, g, dtype=torch.bool)
        duplicate[1:] = (levels[1:] == levels[:-1]).all(-1)
    else:
        duplicate = video_duplicates(levels)
    unique = int((~duplicate).sum())
    assert 0 < unique < t * g
    for min_k in (0, 1):
        low = config(("dedup", {"scope": scope}), unique / (t * g), min_k)
        keep = _mask(select_pretower(pixels, [grid_thw], [low])[0], t, g)
        kept_duplicates = (keep & duplicate).sum(1)
        if min_k == 0:
            assert int(kept_duplicates.sum()) == 0 and torch.equal(keep, ~duplicate)
        else:  # a duplicate only where the slice has no unique group left to meet its floor
            assert torch.all(kept_duplicates <= (min_k - (keep & ~duplicate).sum(1)).clamp_min(0))
        high = config(("dedup", {"scope": scope}), min(1.0, (unique + 5) / (t * g)), min_k)
        keep = _mask(select_pretower(pixels, [grid_thw], [high])[0], t, g)
        assert bool(keep[~duplicate].all())  # every unique group is kept before any duplicate


def test_video_scope_finds_spatial_and_returning_duplicates() -> None:
    grid_thw = (3, 4, 4)  # 3 slices of 4 groups
    gen = torch.Generator().manual_seed(0)
    a, b, c = torch.randint(0, 256, (3, 4 * COLUMNS), generator=gen, dtype=torch.uint8)
    levels = torch.stack([torch.stack([a, a, b, c]), torch.stack([c, b, c, b]), torch.stack([a, b, a, a])])
    pixels = levels.reshape(-1, COLUMNS)
    expected = torch.tensor([[0, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(video_duplicates(levels), expected)
    sel = select_pretower(pixels, [grid_thw], [config(("dedup", {"scope": "video"}), 3 / 12, 0)])[0]
    assert sel.kept.tolist() == [0, 2, 3]


@pytest.mark.parametrize("reference", ["last_kept", "previous"])
def test_novelty_keeps_a_brief_flash(reference: str) -> None:
    """A static textured scene; slice 5 flashes a bright block of 4 groups, then the scene returns."""
    grid_thw = (8, 16, 16)
    t, g = 8, 64
    levels = make_video(grid_thw, "static", 1).view(t, g, -1).clone()
    flash = torch.tensor([9, 10, 17, 18])
    levels[5, flash] = 255
    pixels = levels.reshape(-1, COLUMNS)
    keep = _mask(select_pretower(pixels, [grid_thw], [config(("novelty", {"reference": reference}), 0.2, 1)])[0], t, g)
    assert bool(keep[5, flash].all()) and bool(keep[6, flash].all())  # the flash and the return
    assert int(keep[0].sum()) == g  # the first slice is kept whole
    quiet = [s for s in range(1, t) if s not in (5, 6)]
    assert torch.equal(keep[quiet].sum(1), torch.ones(len(quiet), dtype=torch.long))  # only the floor elsewhere


def test_last_kept_reference_catches_slow_drift() -> None:
    """Group 0 drifts by one level per slice; group 1 toggles by two levels every slice; one group per slice
    after the first. Compared with the previous slice the toggle always wins, so the drift is never shown
    again; compared with what was last kept, the drift catches up and is shown."""
    t, g, d = 8, 4, 4 * COLUMNS
    levels = torch.full((t, g, d), 100, dtype=torch.uint8)
    levels[:, 0] += torch.arange(t, dtype=torch.uint8)[:, None]
    levels[1::2, 1] += 2
    pixels = levels.reshape(-1, COLUMNS)
    budget_retention = (g + t - 1) / (t * g)  # the first slice whole, then one group per slice
    kept = {}
    for reference in ("previous", "last_kept"):
        sel = select_pretower(pixels, [(t, 4, 4)], [config(("novelty", {"reference": reference}), budget_retention, 1)])
        kept[reference] = _mask(sel[0], t, g)
    assert kept["previous"][1:, 0].sum() == 0
    assert kept["last_kept"][1:, 0].sum() > 0


def test_drivers_reject_methods_of_the_other_stage() -> None:
    pixels = make_video((2, 4, 4), "noise", 0)
    with pytest.raises(ValueError, match="needs a pre-tower method"):
        select_pretower(pixels, [(2, 4, 4)], [PruneConfig(method="vcast")])
    with pytest.raises(ValueError, match="'novelty' selects from pixels before the tower"):
        select_tokens(torch.randn(8, 3), [(2, 2, 2)], [PruneConfig(method="novelty", retention=0.5)])
    two_stage = PruneConfig(method="vcast", pre_tower=PruneConfig(method="novelty"))
    with pytest.raises(ValueError, match="is a two-stage config.*pass valid="):
        select_tokens(torch.randn(8, 3), [(2, 2, 2)], [two_stage])


def test_rows_of_a_wrong_grid_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="does not hold the 32 rows"):
        select_pretower(make_video((2, 4, 4), "noise", 0)[:-4], [(2, 4, 4)], [PruneConfig(method="novelty")])
    with pytest.raises(ValueError, match="not divisible by spatial_merge_size"):
        select_pretower(torch.zeros(6, COLUMNS, dtype=torch.uint8), [(1, 2, 3)], [PruneConfig(method="novelty")])


def _mask(sel, t: int, g: int) -> torch.Tensor:
    keep = torch.zeros(t * g, dtype=torch.bool)
    keep[sel.kept] = True
    return keep.view(t, g)
