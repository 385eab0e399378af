"""Stream state: on the CPU, under its byte budget, and the same input state for every encode of an item."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_vtprune.core import StreamState
from vllm_vtprune.streams import HISTORY, StreamStore


def _state(value: float, channels: int = 64) -> StreamState:
    return StreamState(method="stc", memory_sum=torch.full((channels,), value), memory_count=int(value))


def test_an_item_selects_with_the_state_before_its_first_encode():
    store = StreamStore(1 << 20)
    assert store.state_for("s", "sig", "a") is None
    store.advance("s", "sig", "a", None, _state(1))
    store.advance("s", "sig", "b", _state(1), _state(2))
    assert store.state_for("s", "sig", "a") is None  # a's input state, not the stream's latest
    assert int(store.state_for("s", "sig", "b").memory_count) == 1
    assert int(store.state_for("s", "sig", "c").memory_count) == 2  # a new item continues the stream
    store.advance("s", "sig", "a", _state(2), _state(9))  # a re-encode of a does not advance the stream again
    assert int(store.state_for("s", "sig", "c").memory_count) == 2


def test_other_options_start_the_stream_afresh():
    store = StreamStore(1 << 20)
    store.advance("s", "stc-64", "a", None, _state(1))
    assert store.state_for("s", "stc-32", "b") is None
    store.advance("s", "stc-32", "b", None, _state(1, channels=32))
    assert store.resets == 1 and store.state_for("s", "stc-64", "c") is None


def test_states_live_on_the_cpu():
    store = StreamStore(1 << 20)
    store.advance("s", "sig", "a", None, StreamState("mssavt", last_slice=torch.ones(2, 2, 8, dtype=torch.bfloat16)))
    assert store.state_for("s", "sig", "b").last_slice.device.type == "cpu"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 40), st.integers(1, 200)), max_size=60),
       st.integers(0, 4000))
def test_never_more_bytes_than_the_budget(events, budget):
    store = StreamStore(budget)
    for stream, item, channels in events:
        sid = f"stream-{stream}" * (1 + stream)  # ids of different lengths: they count too
        before = store.state_for(sid, "sig", str(item))
        store.advance(sid, "sig", str(item), before, _state(item, channels))
        assert store.bytes_used <= budget
        assert len(store) <= len(events)
    assert HISTORY >= 2
