"""``VideoEncoder`` through vLLM's real ``Qwen3_VisionTransformer`` (tiny checkpoint, CPU, fp32): exactness.

When nothing is approximate (cacher off, ratio 1, or every slice a reference) the outputs must be bit-identical to
the stock ``visual(pixel_values, grid_thw)`` split per video, and the selective path itself must reproduce the
stock block when it recomputes every token.
"""

from __future__ import annotations

import pytest
import torch

from vllm_vtprune.vision import CacherConfig, VideoEncoder
from vllm_vtprune.vision.plan import plan_encode

GRIDS = [
    [[2, 4, 4]],
    [[4, 8, 12]],
    [[3, 16, 16]],
    [[4, 8, 12], [3, 6, 10]],  # a batch of two videos with different grids
    [[5, 6, 8], [1, 4, 4], [2, 8, 8]],
]
EXACT = [
    CacherConfig(),
    CacherConfig(True, 1.0, 2),
    CacherConfig(True, 0.25, 1),
    CacherConfig(False, 0.25, 2),
]


def _random_pixels(grid, seed=0):
    rows = sum(t * h * w for t, h, w in grid)
    return torch.randn(rows, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: "+".join("x".join(map(str, v)) for v in g))
@pytest.mark.parametrize("cfg", EXACT, ids=["off", "ratio1", "interval1", "disabled"])
def test_exact_configs_equal_stock(tiny_tower, stock, grid, cfg):
    px = _random_pixels(grid)
    expect = stock(tiny_tower, px, grid)
    outs, stats = VideoEncoder(tiny_tower).encode(px, grid, [cfg] * len(grid))
    assert len(outs) == len(grid)
    for got, exp in zip(outs, expect):
        assert got.dtype == torch.float32
        assert torch.equal(got, exp)
    assert stats.cacher_selective_slices == 0
    assert stats.slices_computed == stats.slices_total == sum(t for t, _, _ in grid)


def test_real_video_batch_equals_stock(tiny_tower, stock, video_pixels):
    (a, ga), (b, gb) = video_pixels("moving_objects", 8), video_pixels("slow_pan", 6, 64, 64)
    px, grid = torch.cat([a, b]), [ga, gb]
    outs, _ = VideoEncoder(tiny_tower).encode(px, grid, [CacherConfig(True, 1.0, 2), CacherConfig()])
    assert all(torch.equal(o, e) for o, e in zip(outs, stock(tiny_tower, px, grid)))


def test_selective_path_recomputing_every_token_matches_stock(tiny_tower, stock, video_pixels):
    """Forced through the selective path with ratio 1: split-qkv keys, mixed values, reference deltas all
    replaced. Same math as the stock block, so equal up to float rounding (different GEMM kernels)."""
    (a, ga), (b, gb) = video_pixels("moving_objects", 8), video_pixels("near_static", 10, 64, 64)
    px, grid = torch.cat([a, b]), [ga, gb]
    expect = stock(tiny_tower, px, grid)
    for interval in (2, 3):
        cfg = CacherConfig(True, 1.0, interval)
        plan = plan_encode(grid, [cfg, cfg], [None, None], [False, False], None, force_selective=True)
        outs, stats = VideoEncoder(tiny_tower).run(plan, px)
        assert stats.cacher_selective_slices == sum(t - (t + interval - 1) // interval for t, _, _ in grid)
        for got, exp in zip(outs, expect):
            torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-5)


def test_cacher_path_is_approximate_exact_on_references(tiny_tower, stock, video_pixels):
    px, g = video_pixels("moving_objects", 16)
    (exp,) = stock(tiny_tower, px, [g])
    (got,), stats = VideoEncoder(tiny_tower).encode(px, [g], [CacherConfig(True, 0.25, 2)])
    t, per = g[0], g[1] * g[2] // 4
    assert stats.cacher_selective_slices == t // 2 and stats.slices_computed == t
    got, exp = got.view(t, per, -1), exp.view(t, per, -1)
    assert torch.equal(got[0::2], exp[0::2])  # references: the stock block computation
    assert not torch.equal(got[1::2], exp[1::2])  # selective slices: approximate


def test_mixed_batch_keeps_other_videos_exact(tiny_tower, stock, video_pixels):
    (a, ga), (b, gb) = video_pixels("moving_objects", 8), video_pixels("slow_pan", 8)
    px, grid = torch.cat([a, b]), [ga, gb]
    expect = stock(tiny_tower, px, grid)
    outs, stats = VideoEncoder(tiny_tower).encode(px, grid, [CacherConfig(True, 0.25, 2), CacherConfig()])
    assert torch.equal(outs[1], expect[1])
    assert stats.cacher_selective_slices == ga[0] // 2 and stats.tower_calls == 1


def test_cacher_is_deterministic_and_batch_invariant(tiny_tower, video_pixels):
    (a, ga), (b, gb) = video_pixels("moving_objects", 12), video_pixels("slow_pan", 6, 64, 64)
    c = CacherConfig(True, 0.25, 2)
    enc = VideoEncoder(tiny_tower)
    (alone,), _ = enc.encode(a, [ga], [c])
    (again,), _ = enc.encode(a, [ga], [c])
    assert torch.equal(alone, again)
    both, _ = enc.encode(torch.cat([b, a]), [gb, ga], [CacherConfig(True, 0.5, 3), c])
    torch.testing.assert_close(both[1], alone, rtol=1e-5, atol=1e-6)


def test_interval_three_references(tiny_tower, stock, video_pixels):
    px, g = video_pixels("slow_pan", 14)
    (exp,) = stock(tiny_tower, px, [g])
    (got,), stats = VideoEncoder(tiny_tower).encode(px, [g], [CacherConfig(True, 0.25, 3)])
    t, per = g[0], g[1] * g[2] // 4
    assert stats.cacher_selective_slices == t - (t + 2) // 3
    assert torch.equal(got.view(t, per, -1)[0::3], exp.view(t, per, -1)[0::3])


def test_validation(tiny_tower):
    enc = VideoEncoder(tiny_tower)
    px = _random_pixels([[2, 4, 4]])
    with pytest.raises(ValueError, match="rows"):
        enc.encode(px[:-1], [[2, 4, 4]])
    with pytest.raises(ValueError, match="cachers has 2 entries for 1 videos"):
        enc.encode(px, [[2, 4, 4]], [CacherConfig(), CacherConfig()])
    with pytest.raises(ValueError, match="recompute_ratio"):
        enc.encode(px, [[2, 4, 4]], [{"enabled": True, "recompute_ratio": 0}])
