"""Slice keys and the byte-budgeted LRU (no vLLM needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_vtprune.vision.slice_cache import SliceCache, slice_key_salt, slice_keys

# ---------------------------------------------------------------- keys


def _pixels(t, h, w, c=12, seed=0):
    return torch.randn(t * h * w, c, generator=torch.Generator().manual_seed(seed))


def test_keys_shape_and_determinism():
    px = _pixels(3, 2, 4)
    k = slice_keys(px, [3, 2, 4], b"model-a")
    assert k.shape == (3, 2) and k.dtype == torch.int64
    assert torch.equal(k, slice_keys(px.clone(), [3, 2, 4], b"model-a"))
    assert torch.equal(k, slice_keys(px.numpy(), (3, 2, 4), "model-a"))  # numpy input, str salt


def test_keys_follow_slice_content_only():
    px = _pixels(3, 2, 4)
    k = slice_keys(px, [3, 2, 4], b"s")
    changed = px.clone()
    changed[1 * 8 + 5, 7] += 1e-3  # one value of slice 1
    k2 = slice_keys(changed, [3, 2, 4], b"s")
    assert torch.equal(k[0], k2[0]) and torch.equal(k[2], k2[2]) and not torch.equal(k[1], k2[1])
    # a slice's key does not depend on where it sits in the video
    assert torch.equal(slice_keys(px[8:16], [1, 2, 4], b"s")[0], k[1])
    # identical slices get identical keys
    rep = torch.cat([px[:8], px[:8]])
    kr = slice_keys(rep, [2, 2, 4], b"s")
    assert torch.equal(kr[0], kr[1])


def test_keys_are_salted_with_salt_grid_and_dtype():
    px = _pixels(2, 2, 4)
    base = slice_keys(px, [2, 2, 4], b"s")
    assert not torch.equal(base, slice_keys(px, [2, 2, 4], b"t"))
    assert not torch.equal(base[0], slice_keys(px, [2, 4, 2], b"s")[0])  # same bytes, other grid
    assert not torch.equal(base, slice_keys(px.double(), [2, 2, 4], b"s"))
    bf = slice_keys(px.bfloat16(), [2, 2, 4], b"s")  # bf16 (no numpy dtype) works
    assert bf.shape == (2, 2) and not torch.equal(bf, base)
    assert slice_key_salt("Qwen/Qwen3-VL-8B", "main", {"fps": 2}) != slice_key_salt("Qwen/Qwen3-VL-8B", "dev")


def test_keys_reject_bad_shapes():
    with pytest.raises(ValueError, match="rows"):
        slice_keys(_pixels(2, 2, 4), [3, 2, 4], b"s")
    with pytest.raises(ValueError, match="2-D"):
        slice_keys(torch.zeros(2, 3, 4), [1, 1, 2], b"s")


# ---------------------------------------------------------------- LRU


def _t(nbytes: int) -> torch.Tensor:
    return torch.zeros(nbytes // 4, dtype=torch.float32)


def test_lru_order_and_eviction():
    c = SliceCache(300)
    c.put("a", _t(100))
    c.put("b", _t(100))
    c.put("c", _t(100))
    assert c.keys() == ["a", "b", "c"] and c.bytes_used == 300
    assert c.get("a") is not None  # refresh a
    c.put("d", _t(100))  # evicts the least recently used: b
    assert c.keys() == ["c", "a", "d"] and c.evictions == 1
    assert c.get("b") is None
    c.put("e", _t(200))  # needs two evictions: c, then a
    assert c.keys() == ["d", "e"] and c.bytes_used == 300


def test_oversize_not_stored_and_replace():
    c = SliceCache(100)
    assert not c.put("big", _t(104))
    assert len(c) == 0 and c.bytes_used == 0
    c.put("x", _t(40))
    c.put("x", _t(80))  # replace: counted once
    assert c.bytes_used == 80 and len(c) == 1
    assert not c.put("x", _t(120))  # a too-large replacement drops the old entry
    assert "x" not in c and c.bytes_used == 0


def test_stores_private_copies():
    big = torch.arange(1000, dtype=torch.float32)
    c = SliceCache(10_000)
    c.put("v", big[10:20])  # a view of a larger tensor
    assert c.bytes_used == 40
    stored = c.get("v")
    assert stored.untyped_storage().nbytes() == 40
    big[10] = -1
    assert stored[0].item() == 10.0


def test_clear_and_zero_budget():
    c = SliceCache(1000)
    c.put("a", _t(100))
    c.clear()
    assert len(c) == 0 and c.bytes_used == 0 and c.get("a") is None
    z = SliceCache(0)
    assert not z.put("a", _t(4)) and len(z) == 0
    with pytest.raises(ValueError):
        SliceCache(-1)


@settings(max_examples=80, deadline=None)
@given(
    budget=st.integers(0, 2000),
    ops=st.lists(
        st.tuples(st.sampled_from(["put", "get"]), st.integers(0, 9), st.integers(0, 700)), max_size=60
    ),
)
def test_never_exceeds_budget_and_matches_reference_lru(budget, ops):
    c = SliceCache(budget)
    model: list[tuple[int, int]] = []  # (key, bytes), least recently used first
    for op, key, size in ops:
        size -= size % 4
        if op == "put":
            stored = c.put(key, _t(size))
            model = [(k, s) for k, s in model if k != key]
            if size <= budget:
                while sum(s for _, s in model) + size > budget:
                    model.pop(0)
                model.append((key, size))
            assert stored == (size <= budget)
        else:
            got = c.get(key)
            hit = [(k, s) for k, s in model if k == key]
            assert (got is not None) == bool(hit)
            if hit:
                model = [(k, s) for k, s in model if k != key] + hit
        assert c.bytes_used <= budget
        assert (
            c.bytes_used == sum(s for _, s in model) == sum(SliceCache.nbytes(t) for t, _ in c._entries.values())
        )
        assert c.keys() == [k for k, _ in model]


def test_numpy_and_torch_float_agree():
    a = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    assert torch.equal(slice_keys(a, [2, 2, 2], b"s"), slice_keys(torch.from_numpy(a), [2, 2, 2], b"s"))
