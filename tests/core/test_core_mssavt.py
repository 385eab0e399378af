"""MSSAVT: scores on a hand-made 3x3 grid, masked-pruning rounds, temporal stages, stream state."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_vtprune.core import PruneConfig, select_tokens, total_budget
from vllm_vtprune.core.mssavt import neighbour_cosines, trace_selection
from vllm_vtprune.core.similarity import row_norms, shifted_row_cosines

from .conftest import make_features

# A 3x3 slice of 2-D unit vectors at these angles (degrees).
ANGLES = [
    [0, 7, 30],
    [19, 60, 48],
    [41, 84, 100],
]
# Smallest angle to a 4-neighbour, worked out by hand from ANGLES (neighbour angles in brackets).
NEAREST_GAP = [
    7,  # (0,0)=0: [7, 19]
    7,  # (0,1)=7: [0, 30, 60]
    18,  # (0,2)=30: [7, 48]
    19,  # (1,0)=19: [0, 60, 41]
    12,  # (1,1)=60: [7, 19, 48, 84]
    12,  # (1,2)=48: [30, 60, 100]
    22,  # (2,0)=41: [19, 84]
    16,  # (2,1)=84: [41, 60, 100]
    16,  # (2,2)=100: [48, 84]
]


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def mssavt_scores(x: torch.Tensor, grid) -> torch.Tensor:
    """MSSAVT of every token of ``x`` [T, H*W, C] as ``trace_selection`` computes it: the max cosine to its
    4-neighbours -> [T, H*W] (-inf if none)."""
    t, h, w = grid
    flat = x.reshape(t * h * w, -1)
    right, below = shifted_row_cosines(flat, [1, w], row_norms(flat))
    return neighbour_cosines(right, below, grid).amax(-1).view(t, h * w)


def _grid_features() -> torch.Tensor:
    return torch.tensor([_unit(a) for row in ANGLES for a in row])


def _mssavt(retention: float, **options) -> PruneConfig:
    return PruneConfig.from_dict({"method": "mssavt", "retention": retention, "options": options})


def test_mssavt_scores_on_a_3x3_grid() -> None:
    got = mssavt_scores(_grid_features().view(1, 9, 2), (1, 3, 3))
    expected = torch.tensor([[math.cos(math.radians(g)) for g in NEAREST_GAP]])
    assert torch.allclose(got, expected, atol=1e-6)


def test_mssavt_ignores_diagonals_and_grid_edges() -> None:
    # Centre token equals the corner tokens (diagonal) but not its 4-neighbours.
    x = torch.tensor([_unit(a) for a in [0, 90, 0, 90, 0, 90, 0, 90, 0]])
    scores = mssavt_scores(x.view(1, 9, 2), (1, 3, 3))
    assert torch.allclose(scores, torch.zeros(1, 9), atol=1e-6)
    assert mssavt_scores(torch.ones(1, 1, 2), (1, 1, 1)).tolist() == [[float("-inf")]]


def test_one_checkerboard_round_prunes_the_most_redundant_of_one_colour() -> None:
    # Prune 2 of 9 (B = round(9 * 7/9) = 7). Colour 0 = (h + w) even: tokens 0, 2, 4, 6, 8 with gaps
    # 7, 18, 12, 22, 16 -> the two smallest gaps (highest cosine) are tokens 0 and 4.
    x = _grid_features()
    trace = trace_selection(x.view(1, 9, 2), (1, 3, 3), 7, _mssavt(7 / 9))
    assert len(trace.rounds) == 1
    assert trace.rounds[0].nonzero()[:, 1].tolist() == [0, 4]
    assert select_tokens(x, [(1, 3, 3)], [_mssavt(7 / 9)])[0].kept.tolist() == [1, 2, 3, 5, 6, 7, 8]
    # Parity 1: tokens 1, 3, 5, 7 with gaps 7, 19, 12, 16 -> tokens 1 and 5.
    odd = select_tokens(x, [(1, 3, 3)], [_mssavt(7 / 9, parity=1)])[0]
    assert odd.kept.tolist() == [0, 2, 3, 4, 6, 7, 8]


def test_greedy_independent_set() -> None:
    # Prune 3: by gap 0(7) 1(7) 4(12) 5(12) 7(16) 8(16) ...: take 0; 1 touches 0; take 4; 5 and 7 touch 4; take 8.
    sel = select_tokens(_grid_features(), [(1, 3, 3)], [_mssavt(6 / 9, mask="greedy")])[0]
    assert sel.kept.tolist() == [1, 2, 3, 5, 6, 7]


def test_rounds_repeat_only_when_needed_and_fall_back_when_isolated() -> None:
    # Prune 6 of 9 (B = 3). Round 0 prunes all five colour-0 tokens; every colour-1 token then has no live
    # neighbour, so rounds 1 (colour 1) and 2 (colour 0, empty) find no candidate; round 3 falls back to the
    # full-grid MSSAVT among colour 1 (gaps 1:7, 3:19, 5:12, 7:16) and prunes token 1.
    trace = trace_selection(_grid_features().view(1, 9, 2), (1, 3, 3), 3, _mssavt(3 / 9))
    assert [r.nonzero()[:, 1].tolist() for r in trace.rounds] == [[0, 2, 4, 6, 8], [], [], [1]]
    assert [bool(f[0]) for f in trace.fallback] == [False, False, False, True]
    assert trace.keep.nonzero()[:, 1].tolist() == [3, 5, 7]


@settings(deadline=None, max_examples=150)
@given(
    grid=st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6)),
    retention=st.floats(0.01, 1.0),
    min_k=st.integers(0, 2),
    mask=st.sampled_from(["checkerboard", "greedy"]),
    temporal=st.sampled_from(["dtd", "evs", "dycoke", "none"]),
    share=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    parity=st.sampled_from([0, 1]),
    alternate=st.booleans(),
    kind=st.sampled_from(["gaussian", "palette", "constant"]),
    seed=st.integers(0, 1000),
)
def test_masked_pruning_invariants(grid, retention, min_k, mask, temporal, share, parity, alternate, kind, seed):
    t, h, w = grid
    min_k = min(min_k, h * w)
    cfg = PruneConfig.from_dict(
        {
            "method": "mssavt",
            "retention": retention,
            "min_tokens_per_slice": min_k,
            "options": {
                "mask": mask,
                "temporal": temporal,
                "temporal_share": share,
                "parity": parity,
                "alternate_parity": alternate,
            },
        }
    )
    budget = total_budget(grid, cfg)
    x = make_features(grid, 6, seed, kind).view(t, h * w, 6)
    trace = trace_selection(x, grid, budget, cfg)

    # Every pruned token is pruned exactly once, by one stage or round.
    pruned = torch.stack([trace.temporal, *trace.rounds]).long().sum(0)
    assert bool((pruned <= 1).all())
    assert torch.equal(pruned == 0, trace.keep)
    assert int(trace.keep.sum()) == budget

    alive = ~trace.temporal
    colour = (torch.arange(h)[:, None] + torch.arange(w)).view(1, h * w) % 2
    for r, (round_mask, fallback) in enumerate(zip(trace.rounds, trace.fallback)):
        grid_mask = round_mask.view(t, h, w)
        # Masked pruning: no two tokens pruned in the same round are 4-adjacent.
        assert not bool((grid_mask[:, :, 1:] & grid_mask[:, :, :-1]).any())
        assert not bool((grid_mask[:, 1:] & grid_mask[:, :-1]).any())
        # Outside the fallback, a pruned token still had a live 4-neighbour when it was pruned.
        a = F.pad(alive.view(t, h, w).float(), (1, 1, 1, 1))
        live_neighbour = (a[:, :-2, 1:-1] + a[:, 2:, 1:-1] + a[:, 1:-1, :-2] + a[:, 1:-1, 2:]).view(t, h * w) > 0
        candidates = alive & (live_neighbour | fallback[:, None])
        if mask == "checkerboard":
            first = parity + (torch.arange(t)[:, None] if alternate else 0)
            candidates &= colour == (first + r) % 2
        assert not bool((round_mask & ~candidates).any())
        # A slice only goes on to the next round once this one could not give more: checkerboard rounds prune
        # every candidate, greedy rounds leave only candidates next to a token they pruned.
        if r + 1 < len(trace.rounds):
            continues = trace.rounds[r + 1].any(1)
            if mask == "checkerboard":
                assert torch.equal(round_mask.sum(1)[continues], candidates.sum(1)[continues])
            else:
                g = F.pad(grid_mask.float(), (1, 1, 1, 1))
                touches = (g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:]).view(t, h * w) > 0
                left = candidates & ~round_mask & ~touches
                assert not bool(left[continues].any())
        alive = alive & ~round_mask


def _rotated(base_deg: list[float], by_deg: list[float]) -> list[float]:
    return [a + b for a, b in zip(base_deg, by_deg)]


def _chunk(*slices_deg: list[float]) -> torch.Tensor:
    return torch.tensor([_unit(a) for s in slices_deg for a in s])


S0 = [0.0, 90.0, 180.0, 270.0]
S1 = _rotated(S0, [5, 40, 20, 60])  # slice 1 vs slice 0: token 0 changed least, then 2
S2 = _rotated(S1, [50, 10, 30, 15])  # slice 2 vs slice 1: token 1 changed least, then 3


def test_dtd_drops_the_tokens_most_similar_to_the_previous_slice() -> None:
    # 12 tokens, B = 9, all 3 pruned by the temporal stage, split over slices 1 and 2 as 2 + 1.
    cfg = _mssavt(0.75, temporal="dtd", temporal_share=1.0)
    sel = select_tokens(_chunk(S0, S1, S2), [(3, 1, 4)], [cfg])[0]
    assert sel.kept.tolist() == [0, 1, 2, 3, 5, 7, 8, 10, 11]


def test_evs_temporal_stage_is_global() -> None:
    # The 3 smallest rotations overall: 5 (slice 1, token 0), 10 and 15 (slice 2, tokens 1 and 3).
    cfg = _mssavt(0.75, temporal="evs", temporal_share=1.0)
    sel = select_tokens(_chunk(S0, S1, S2), [(3, 1, 4)], [cfg])[0]
    assert sel.kept.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 10]


def test_dycoke_references_windows_of_four() -> None:
    grid = (5, 2, 3)
    x = make_features(grid, 8, 5)
    cfg = _mssavt(0.8, temporal="dycoke", temporal_share=1.0)  # 30 tokens, B = 24: 6 dropped
    trace = trace_selection(x.view(5, 6, 8), grid, 24, cfg)
    assert trace.rounds == []
    slices = x.view(5, 6, 8)
    references = {1: 0, 2: 0, 3: 2}  # slice 0 anchors the window, slice 4 anchors the next one
    assert not bool(trace.temporal[0].any()) and not bool(trace.temporal[4].any())
    for s, ref in references.items():
        sim = F.cosine_similarity(slices[s], slices[ref], dim=-1).tolist()
        most_similar = sorted(range(6), key=lambda p: (-sim[p], p))[:2]  # 6 split evenly: 2 per slice
        assert trace.temporal[s].nonzero().flatten().tolist() == sorted(most_similar)


def test_stream_state_gives_the_first_slice_a_reference() -> None:
    cfg = _mssavt(0.5, temporal="dtd", temporal_share=1.0)
    first = select_tokens(_chunk(S0, S0), [(2, 1, 4)], [cfg])[0]
    assert first.state is not None and first.state.method == "mssavt"
    assert torch.equal(first.state.last_slice, _chunk(S0).view(1, 4, 2))
    # Next chunk: one slice, S0 rotated by 5, 40, 20, 60. B = 2: with the state both pruned tokens are the
    # temporally most similar (0 and 2); without it the single slice has no temporal reference.
    nxt = _chunk(S1)
    with_state = trace_selection(nxt.view(1, 4, 2), (1, 1, 4), 2, cfg, first.state)
    assert with_state.temporal.nonzero()[:, 1].tolist() == [0, 2] and with_state.rounds == []
    assert select_tokens(nxt, [(1, 1, 4)], [cfg], [first.state])[0].kept.tolist() == [1, 3]
    alone = trace_selection(nxt.view(1, 4, 2), (1, 1, 4), 2, cfg)
    assert not bool(alone.temporal.any()) and len(alone.rounds) >= 1
    # A state from another resolution is ignored rather than misused.
    other = trace_selection(nxt.view(2, 2, 2), (2, 1, 2), 2, cfg, first.state)
    assert not bool(other.temporal[0].any())


def test_stateless_temporal_stages_return_no_state() -> None:
    x = make_features((3, 2, 2), 4, 1)
    for temporal in ("dycoke", "none"):
        assert select_tokens(x, [(3, 2, 2)], [_mssavt(0.5, temporal=temporal)])[0].state is None
