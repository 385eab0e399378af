"""Exact per-slice reuse through ``VideoEncoder`` (tiny checkpoint, vLLM's tower, CPU, fp32)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_vtprune.vision import CacherConfig, VideoEncoder, slice_keys
from vllm_vtprune.vision.estimate import SavedSecondsEstimate

SALT = b"tiny-qwen3vl|test"
MB = 1 << 20


def _keys(px, g, salt=SALT):
    return slice_keys(px, g, salt)


def test_identical_slices_are_served_from_cache_exactly(tiny_tower, stock, video_pixels):
    px, g = video_pixels("moving_objects", 8)
    enc = VideoEncoder(tiny_tower, cache_bytes=64 * MB)
    (first,), s1 = enc.encode(px, [g], None, [_keys(px, g)], [True])
    assert (s1.slices_from_cache, s1.slices_computed) == (0, g[0])
    (second,), s2 = enc.encode(px, [g], None, [_keys(px, g)], [True])
    assert (s2.slices_from_cache, s2.slices_computed, s2.tower_calls) == (g[0], 0, 0)
    saved = SavedSecondsEstimate()
    assert saved.record(s1) == 0.0 and s1.tower_seconds > 0
    assert s2.tower_seconds == 0.0 and saved.record(s2) == pytest.approx(s1.tower_seconds)  # the same work, hit
    (exp,) = stock(tiny_tower, px, [g])
    assert torch.equal(first, exp) and torch.equal(second, exp)


def test_growing_video_computes_only_new_slices(tiny_tower, stock, video_pixels):
    """A client resending frames 0..N, then 0..N+k: the second request runs the tower on the new slices only,
    and its output is bit-identical to encoding the whole video without any cache."""
    enc = VideoEncoder(tiny_tower, cache_bytes=64 * MB)
    short, gs = video_pixels("slow_pan", 8, of=14)
    long, gl = video_pixels("slow_pan", 14)
    assert torch.equal(long[: short.shape[0]], short)  # the processor output of the prefix is the prefix
    enc.encode(short, [gs], None, [_keys(short, gs)], [True])
    (out,), st_ = enc.encode(long, [gl], None, [_keys(long, gl)], [True])
    assert (st_.slices_from_cache, st_.slices_computed) == (gs[0], gl[0] - gs[0])
    (exp,) = stock(tiny_tower, long, [gl])
    assert torch.equal(out, exp)


def test_growing_video_with_cacher(tiny_tower, video_pixels):
    """Selective outputs are cached under their own key (slice + reference + ratio): a growing session with the
    cacher on recomputes only new slices (plus a cached reference a new dependant needs), and matches what the
    cacher gives on the whole video."""
    c = CacherConfig(True, 0.25, 2)
    short, gs = video_pixels("moving_objects", 10, of=16)  # 5 slices: refs 0, 2, 4
    long, gl = video_pixels("moving_objects", 16)  # 8 slices: slice 5 depends on cached reference 4
    assert torch.equal(long[: short.shape[0]], short)
    (whole,), _ = VideoEncoder(tiny_tower).encode(long, [gl], [c])
    enc = VideoEncoder(tiny_tower, cache_bytes=64 * MB)
    enc.encode(short, [gs], [c], [_keys(short, gs)], [True])
    (out,), st_ = enc.encode(long, [gl], [c], [_keys(long, gl)], [True])
    assert st_.slices_from_cache == gs[0] - 1  # reference 4 recomputed for its new dependant 5
    assert st_.references_recomputed == 1
    assert st_.slices_computed == gl[0] - gs[0] + 1 and st_.cacher_selective_slices == 2
    torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-6)
    # exact and approximate entries never alias: the same pixels without the cacher miss the selective entries
    _, st2 = enc.encode(long, [gl], None, [_keys(long, gl)], [True])
    assert st2.slices_from_cache == (gl[0] + 1) // 2  # only the references are exact entries


def test_duplicate_slices_in_one_call_are_computed_once(tiny_tower, stock):
    h = w = 8
    one = torch.randn(h * w, 1536, generator=torch.Generator().manual_seed(1))
    other = torch.randn(h * w, 1536, generator=torch.Generator().manual_seed(2))
    px = torch.cat([one, other, one, one])  # slices 0, 2, 3 identical
    g = [4, h, w]
    enc = VideoEncoder(tiny_tower, cache_bytes=64 * MB)
    (out,), st_ = enc.encode(px, [g], None, [_keys(px, g)], [True])
    assert st_.slices_computed == 2 and st_.slices_total == 4
    (exp,) = stock(tiny_tower, px, [g])
    assert torch.equal(out, exp)


def test_cache_switches(tiny_tower, video_pixels):
    px, g = video_pixels("near_static", 6)
    k = _keys(px, g)
    enc = VideoEncoder(tiny_tower, cache_bytes=64 * MB)
    enc.encode(px, [g], None, [k], [True])
    # not for this request / no keys / another salt: no hits
    assert enc.encode(px, [g], None, [k], [False])[1].slices_from_cache == 0
    assert enc.encode(px, [g], None, [None], [True])[1].slices_from_cache == 0
    assert enc.encode(px, [g], None, [_keys(px, g, b"other-model")], [True])[1].slices_from_cache == 0
    assert enc.encode(px, [g], None, [k], [True])[1].slices_from_cache == g[0]
    enc.clear()
    assert len(enc.cache) == 0 and enc.cache.bytes_used == 0
    assert enc.encode(px, [g], None, [k], [True])[1].slices_from_cache == 0
    # a zero budget disables the cache
    z = VideoEncoder(tiny_tower)
    z.encode(px, [g], None, [k], [True])
    assert z.encode(px, [g], None, [k], [True])[1].slices_from_cache == 0


def test_lru_eviction_through_encoder(tiny_tower, video_pixels):
    px, g = video_pixels("moving_objects", 6)  # 3 slices
    per_slice = g[1] * g[2] // 4 * tiny_tower.out_hidden_size * 4
    enc = VideoEncoder(tiny_tower, cache_bytes=2 * per_slice)  # room for two slices
    k = _keys(px, g)
    enc.encode(px, [g], None, [k], [True])
    assert len(enc.cache) == 2 and enc.cache.bytes_used == 2 * per_slice  # slice 0 evicted by slice 2
    rows = g[1] * g[2]
    one = px[rows : 2 * rows]  # slice 1 alone: a hit, refreshed
    assert enc.encode(one, [[1, g[1], g[2]]], None, [k[1:2]], [True])[1].slices_from_cache == 1
    zero = px[:rows]  # slice 0: a miss; storing it evicts slice 2 (least recent), not 1
    assert enc.encode(zero, [[1, g[1], g[2]]], None, [k[0:1]], [True])[1].slices_from_cache == 0
    assert enc.encode(one, [[1, g[1], g[2]]], None, [k[1:2]], [True])[1].slices_from_cache == 1
    two = px[2 * rows :]
    assert enc.encode(two, [[1, g[1], g[2]]], None, [k[2:3]], [True])[1].slices_from_cache == 0
    small = VideoEncoder(tiny_tower, cache_bytes=per_slice - 4)  # a slice never fits: nothing stored
    small.encode(px, [g], None, [k], [True])
    assert len(small.cache) == 0


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    budget_slices=st.floats(0.0, 4.0),
    requests=st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=4), min_size=1, max_size=5),
)
def test_budget_never_exceeded_and_outputs_exact(tiny_tower, stock, budget_slices, requests):
    """Random request sequences over a pool of 6 distinct slices: the cache stays within budget and every output
    equals the uncached stock output, whatever was served from the cache."""
    h, w = 4, 8
    pool = torch.randn(6, h * w, 1536, generator=torch.Generator().manual_seed(7))
    per_slice = h * w // 4 * tiny_tower.out_hidden_size * 4
    enc = VideoEncoder(tiny_tower, cache_bytes=int(budget_slices * per_slice))
    for ids in requests:
        px = pool[ids].reshape(-1, 1536)
        g = [len(ids), h, w]
        (out,), _ = enc.encode(px, [g], None, [_keys(px, g)], [True])
        assert enc.cache.bytes_used <= enc.cache.max_bytes
        assert torch.equal(out, stock(tiny_tower, px, [g])[0])
