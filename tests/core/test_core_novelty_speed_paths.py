"""The exact uint8 L1 distance that ``novelty`` and ``dedup`` score with, and the one-thread scope the API
server runs the plugin's tensor work in."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_vtprune.core.novelty import l1_distance, temporal_change
from vllm_vtprune.cpu_threads import one_thread


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 300), st.integers(0, 2**31 - 1))
def test_l1_distance_is_the_exact_integer_sum(t: int, g: int, d: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 256, (t, g, d), dtype=torch.uint8, generator=gen)
    b = torch.randint(0, 256, (t, g, d), dtype=torch.uint8, generator=gen)
    a[..., 0], b[..., 0] = 0, 255  # the extremes, both ways: no uint8 wrap-around
    a[..., -1], b[..., -1] = 255, 0
    expected = (a.long() - b.long()).abs().sum(-1)
    assert torch.equal(l1_distance(a, b), expected) and l1_distance(a, b).dtype == torch.int64
    change = temporal_change(a)
    assert torch.equal(change, (a[1:].long() - a[:-1].long()).abs().sum(-1))


def test_one_thread_is_scoped_and_restored():
    before = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    try:
        with one_thread():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert torch.get_num_threads() == before
