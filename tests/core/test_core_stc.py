"""STC-Pruner: hand-computed gaussian and dual-anchor scores, memory across chunks, channel screening."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_vtprune.core import PruneConfig, select_tokens

from .conftest import make_features

# One slice of three tokens a, b (= a), c. Channel 1 varies more than channel 0 (variances 2/9 and 8/9), so the
# screened channels keep their natural order; the normalised tokens are (1, 0), (1, 0), (0, 1).
A, C = [1.0, 0.0], [0.0, 2.0]
CHUNK = torch.tensor([A, A, C])
ROOT2, ROOT5, ROOT29 = math.sqrt(2.0), math.sqrt(5.0), math.sqrt(29.0)


def _stc(retention: float, **options) -> PruneConfig:
    return PruneConfig.from_dict(
        {"method": "stc", "retention": retention, "options": {"channel_keep_ratio": 1.0, **options}}
    )


def _kernel(d: float) -> float:
    return sum(math.exp(-d / (2 * a)) for a in (1 / 8, 1 / 4, 1 / 2, 1, 2))


def test_gaussian_without_history() -> None:
    # Frame anchor = mean of the unit tokens = (2/3, 1/3). Memory = this chunk's raw mean (2/3, 2/3) -> (1, 1)/sqrt2.
    score_a = _kernel(2 / 9) + _kernel(2 - ROOT2)  # |a_hat - frame|^2 = 2/9, |a_hat - m|^2 = 2 - 2/sqrt2
    score_c = _kernel(8 / 9) + _kernel(2 - ROOT2)
    assert score_c < score_a  # c is the most novel: kept first
    one = select_tokens(CHUNK, [(1, 1, 3)], [_stc(0.34)])[0]  # k = round(3 * 0.34) = 1
    assert one.kept.tolist() == [2]
    two = select_tokens(CHUNK, [(1, 1, 3)], [_stc(0.67)])[0]  # k = 2: c, then a (tied with b, lower index)
    assert two.kept.tolist() == [0, 2]
    assert torch.allclose(one.state.memory_sum, torch.tensor([2 / 3, 2 / 3]))
    assert one.state.memory_count == 1


def _history_state():
    state = select_tokens(torch.tensor([[0.0, 1.0]] * 3), [(1, 1, 3)], [_stc(0.34)])[0].state
    assert torch.allclose(state.memory_sum, torch.tensor([0.0, 1.0])) and state.memory_count == 1
    return state


def test_history_changes_the_temporal_anchor() -> None:
    # Memory = mean of (0, 1) and (2/3, 2/3) = (1/3, 5/6) -> (2, 5)/sqrt29; the frame anchor stays (2/3, 1/3).
    score_a = _kernel(2 / 9) + _kernel(2 - 4 / ROOT29)
    score_c = _kernel(8 / 9) + _kernel(2 - 10 / ROOT29)
    assert score_a < score_c  # now a is the most novel
    sel = select_tokens(CHUNK, [(1, 1, 3)], [_stc(0.34)], [_history_state()])[0]
    assert sel.kept.tolist() == [0]
    assert torch.allclose(sel.state.memory_sum, torch.tensor([2 / 3, 5 / 3])) and sel.state.memory_count == 2


def test_memory_is_kept_in_ascending_variance_channel_order() -> None:
    # Channel 0 = 3, 0, 3 (variance 2), channel 1 = 1, 1, 1 (variance 0): the chunk mean (2, 1) is stored as
    # (1, 2), lowest-variance channel first, as the released code does.
    tokens = torch.tensor([[3.0, 1.0], [0.0, 1.0], [3.0, 1.0]])
    state = select_tokens(tokens, [(1, 1, 3)], [_stc(0.34)])[0].state
    assert torch.allclose(state.memory_sum, torch.tensor([1.0, 2.0]))


def test_dual_anchor_weights_the_two_anchors() -> None:
    state = _history_state()
    # Memory anchor (2, 5)/sqrt29: 1 - cos = 1 - 2/sqrt29 for a, 1 - 5/sqrt29 for c -> alpha = 1 keeps a.
    # Frame anchor (2, 1)/sqrt5: 1 - cos = 1 - 2/sqrt5 for a, 1 - 1/sqrt5 for c -> alpha = 0 keeps c.
    assert 1 - 2 / ROOT29 > 1 - 5 / ROOT29 and 1 - 1 / ROOT5 > 1 - 2 / ROOT5
    memory_only = select_tokens(CHUNK, [(1, 1, 3)], [_stc(0.34, strategy="dual_anchor", alpha=1.0)], [state])[0]
    frame_only = select_tokens(CHUNK, [(1, 1, 3)], [_stc(0.34, strategy="dual_anchor", alpha=0.0)], [state])[0]
    assert memory_only.kept.tolist() == [0]
    assert frame_only.kept.tolist() == [2]


@settings(deadline=None, max_examples=40)
@given(
    seed=st.integers(0, 10_000),
    retention=st.floats(0.05, 1.0),
    strategy=st.sampled_from(["gaussian", "dual_anchor"]),
)
def test_screening_ignores_high_variance_channels(seed, retention, strategy) -> None:
    """With channel_keep_ratio 0.5, the two noisy channels never influence the selection."""
    grid = (3, 2, 3)
    quiet = make_features(grid, 2, seed) * 0.1
    noise_a, noise_b = (make_features(grid, 2, seed + k) * 100 for k in (1, 2))
    cfg = PruneConfig.from_dict(
        {
            "method": "stc",
            "retention": retention,
            "options": {"strategy": strategy, "channel_keep_ratio": 0.5},
        }
    )
    first = select_tokens(torch.cat([quiet, noise_a], 1), [grid], [cfg])[0]
    second = select_tokens(torch.cat([noise_b[:, :1], quiet, noise_b[:, 1:]], 1), [grid], [cfg])[0]
    assert torch.equal(first.kept, second.kept)


@settings(deadline=None, max_examples=40)
@given(
    seed=st.integers(0, 10_000),
    t=st.integers(1, 7),
    chunk=st.integers(1, 3),
    strategy=st.sampled_from(["gaussian", "dual_anchor"]),
    ratio=st.sampled_from([0.5, 1.0]),
)
def test_chunk_slices_equals_feeding_chunks_one_call_at_a_time(seed, t, chunk, strategy, ratio) -> None:
    grid = (t, 2, 3)
    x = make_features(grid, 6, seed)
    options = {"strategy": strategy, "channel_keep_ratio": ratio}
    cfg = PruneConfig.from_dict({"method": "stc", "retention": 0.4, "options": {**options, "chunk_slices": chunk}})
    whole = select_tokens(x, [grid], [cfg])[0]

    per_call = PruneConfig.from_dict({"method": "stc", "retention": 0.4, "options": options})
    state, kept = None, []
    for start in range(0, t, chunk):
        stop = min(start + chunk, t)
        sel = select_tokens(x[start * 6 : stop * 6], [(stop - start, 2, 3)], [per_call], [state])[0]
        kept.append(sel.kept + start * 6)
        state = sel.state
    assert torch.equal(whole.kept, torch.cat(kept))
    assert whole.state.memory_count == state.memory_count == -(-t // chunk)
    assert torch.allclose(whole.state.memory_sum, state.memory_sum, atol=1e-6)


def test_default_chunk_is_the_whole_call() -> None:
    x = make_features((4, 2, 2), 8, 3)
    default = select_tokens(x, [(4, 2, 2)], [PruneConfig(method="stc", retention=0.5)])[0]
    explicit = select_tokens(x, [(4, 2, 2)], [PruneConfig(method="stc", retention=0.5, options={"chunk_slices": 4})])[0]
    assert torch.equal(default.kept, explicit.kept) and default.state.memory_count == 1
    assert default.state.memory_sum.shape == (4,)  # half of the 8 channels


def test_state_from_another_channel_count_is_rejected() -> None:
    state = select_tokens(make_features((1, 2, 2), 8, 0), [(1, 2, 2)], [PruneConfig(method="stc")])[0].state
    try:
        select_tokens(make_features((1, 2, 2), 6, 0), [(1, 2, 2)], [PruneConfig(method="stc")], [state])
    except ValueError as exc:
        assert "memory of (4,) channels but these features keep 3" in str(exc)
    else:
        raise AssertionError("expected a ValueError")
