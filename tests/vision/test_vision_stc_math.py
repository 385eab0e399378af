"""Pure-torch STC-Cacher selection math (``vllm_vtprune.core.stc_cacher``): no vLLM needed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_vtprune.core.stc_cacher import (
    cosine_from_terms,
    flat_row_index,
    key_similarity_terms,
    lowest_k,
    num_recomputed,
    reference_slices,
)


def select_dynamic_tokens(keys: torch.Tensor, ref_keys: torch.Tensor, ratio: float) -> torch.Tensor:
    """STC's dynamic-token selection as the selective tower composes it (the tensor-parallel path: cosines from
    the similarity terms): the ``num_recomputed`` lowest-cosine tokens of each slice, ascending."""
    return lowest_k(cosine_from_terms(key_similarity_terms(keys, ref_keys)), num_recomputed(keys.shape[-2], ratio))


def test_num_recomputed_matches_released_rule():
    assert num_recomputed(256, 0.25) == 64
    assert num_recomputed(729, 0.25) == 182  # SigLIP 27x27 in the paper: ~182 of 729
    assert num_recomputed(3, 0.25) == 1  # at least one token
    assert num_recomputed(10, 1.0) == 10
    assert num_recomputed(10, 0.3) == 3  # 0.3 * 10 is 3.0000000000000004 or 2.9999... in binary: still 3
    for bad in (0.0, -0.1, 1.5, math.nan):
        with pytest.raises(ValueError):
            num_recomputed(10, bad)


def test_reference_schedule():
    assert reference_slices(7, 2) == [0, 0, 2, 2, 4, 4, 6]
    assert reference_slices(7, 3) == [0, 0, 0, 3, 3, 3, 6]
    assert reference_slices(4, 1) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        reference_slices(4, 0)


def test_selects_lowest_cosine_tokens_sorted():
    ref = torch.randn(1, 8, 16)
    keys = ref.clone()
    keys[0, 5] = -ref[0, 5]  # cosine -1: the most changed
    keys[0, 2] = ref[0, 2] + 0.8 * torch.randn(16)  # changed somewhat
    idx = select_dynamic_tokens(keys, ref, 0.25)  # k = 2
    assert idx.tolist() == [[2, 5]]  # ascending order, not by score


def test_ties_go_to_lower_index():
    ref = torch.ones(2, 6, 4)
    keys = torch.ones(2, 6, 4)  # every cosine is exactly 1: all tied
    assert lowest_k(cosine_from_terms(key_similarity_terms(keys, ref)), 3).tolist() == [[0, 1, 2], [0, 1, 2]]
    scores = torch.tensor([[0.5, 0.1, 0.1, 0.9, 0.1]])
    assert lowest_k(scores, 2).tolist() == [[1, 2]]
    assert lowest_k(torch.tensor([[float("nan"), 0.3, 0.2]]), 2).tolist() == [[1, 2]]  # NaN never preferred


@settings(max_examples=60, deadline=None)
@given(
    g=st.integers(1, 4),
    n=st.integers(1, 40),
    d=st.integers(1, 12),
    ratio=st.floats(0.01, 1.0),
    levels=st.sampled_from([0, 3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_selection_equals_brute_force(g, n, d, ratio, levels, seed):
    """Batched selection == per slice: stable ascending sort of the cosines, first k, sorted."""
    gen = torch.Generator().manual_seed(seed)
    if levels:  # few distinct values: many exact ties
        keys = torch.randint(-levels, levels + 1, (g, n, d), generator=gen).float()
        ref = torch.randint(-levels, levels + 1, (g, n, d), generator=gen).float()
    else:
        keys, ref = torch.randn(g, n, d, generator=gen), torch.randn(g, n, d, generator=gen)
    idx = select_dynamic_tokens(keys, ref, ratio)
    k = num_recomputed(n, ratio)
    assert idx.shape == (g, k)
    for i in range(g):
        sim = cosine_from_terms(key_similarity_terms(keys[i], ref[i]))
        sim = torch.nan_to_num(sim, nan=math.inf)
        expect = sorted(sorted(range(n), key=lambda j: (sim[j].item(), j))[:k])
        assert idx[i].tolist() == expect


def test_similarity_matches_torch_cosine_and_is_rotation_invariant():
    """Comparing keys at the same position: a shared rotation (2-D RoPE at that position) leaves the cosine."""
    keys, ref = torch.randn(3, 10, 8, dtype=torch.float64), torch.randn(3, 10, 8, dtype=torch.float64)
    sim = cosine_from_terms(key_similarity_terms(keys, ref))
    torch.testing.assert_close(sim, F.cosine_similarity(keys, ref, dim=-1).float(), rtol=1e-5, atol=1e-6)
    angle = torch.rand(10, 4, dtype=torch.float64) * 6.28  # one rotation per position and frequency pair
    c, s = angle.cos(), angle.sin()

    def rope(x):
        x1, x2 = x[..., :4], x[..., 4:]
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)

    torch.testing.assert_close(cosine_from_terms(key_similarity_terms(rope(keys), rope(ref))), sim)


def test_flat_row_index():
    idx = torch.tensor([[0, 3], [1, 4]])
    assert flat_row_index(idx, 5).tolist() == [0, 3, 6, 9]
    base = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    rows = base.reshape(-1, 3).index_select(0, flat_row_index(idx, 5))
    assert torch.equal(rows, torch.stack([base[0, 0], base[0, 3], base[1, 1], base[1, 4]]))
    assert torch.equal(flat_row_index(idx[0], 5), idx[0])  # one slice: its own indices
