"""The tower never runs more patches at once than vLLM's memory profiling ran.

The scheduler charges a pruned video its placeholder, far fewer rows than the tower computes, so one encoder step
can hold several times the videos profiling measured; the model splits them into passes within the profiled
patch budget, and the outputs stay exactly those of one stock tower call.
"""

from __future__ import annotations

import pytest
import torch

from vllm_vtprune.model import VtpruneQwen3VLForConditionalGeneration, _passes, _Video
from vllm_vtprune.settings import VtpruneSettings
from vllm_vtprune.vision import VideoEncoder
from vllm_vtprune.wire import ItemPlan


def test_passes_keep_order_and_budget():
    assert _passes([4, 4, 4], 8) == [[0, 1], [2]]
    assert _passes([10, 3, 3, 9], 8) == [[0], [1, 2], [3]]  # a video above the budget goes alone
    assert _passes([], 8) == []


@pytest.mark.parametrize("limit", [96, 200, 10_000])
def test_tower_runs_in_profiled_passes_with_stock_outputs(tiny_tower, stock, limit):
    grids = [[2, 4, 8], [3, 4, 4], [1, 8, 8], [2, 4, 4]]
    px = torch.randn(sum(t * h * w for t, h, w in grids), 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(1))
    model = VtpruneQwen3VLForConditionalGeneration.__new__(VtpruneQwen3VLForConditionalGeneration)
    torch.nn.Module.__init__(model)
    model.video_encoder = VideoEncoder(tiny_tower)
    model.max_tower_patches = limit
    model.metrics = None
    passes = []
    encode = model.video_encoder.encode

    def recording_encode(pixels, grid, *args, **kwargs):
        passes.append(pixels.shape[0])
        return encode(pixels, grid, *args, **kwargs)

    model.video_encoder.encode = recording_encode
    videos = [_Video([t, h, w], None, ItemPlan(VtpruneSettings(), t * h * w // 4), t * h * w, None, None, None)
              for t, h, w in grids]
    video_input = {"type": "pixel_values_videos", "pixel_values_videos": px, "video_grid_thw": torch.tensor(grids)}
    out = model._run_tower(video_input, videos)
    largest = max(t * h * w for t, h, w in grids)
    assert all(n <= max(limit, largest) for n in passes)
    assert sum(passes) == px.shape[0] and (len(passes) > 1) == (limit < px.shape[0])
    for got, want in zip(out, stock(tiny_tower, px, grids)):
        assert torch.equal(got, want)
