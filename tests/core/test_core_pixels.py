"""Pixel rows as the pre-tower methods read them: the processor's row layout (checked against transformers'
Qwen3-VL video processor itself), exact 8-bit levels from every representation, and selections that do not
depend on the representation."""

from __future__ import annotations

import pytest
import torch

from vllm_vtprune.core import PruneConfig
from vllm_vtprune.core.pixels import PixelNorm, group_rows, group_view, pixel_levels, token_grid
from vllm_vtprune.core.pretower import select_pretower

from .test_core_pretower import PRE_VARIANTS


@pytest.fixture(scope="module")
def video_processor(tiny_model: str):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model).video_processor


def _process(processor, frames, **kwargs):
    out = processor(videos=[frames], do_sample_frames=False, return_tensors="pt", **kwargs)
    return out["pixel_values_videos"], [int(x) for x in out["video_grid_thw"][0]]


def test_group_rows_are_the_processors_merge_groups(video_processor) -> None:
    """Frames whose every value encodes (frame, y, x, channel): group (t, g) of ``group_view`` must be the
    32 x 32 block (h, w) = divmod(g, W) of frames 2t and 2t+1, columns ordered (channel, frame, y, x)."""
    import numpy as np

    frames_n, height, width = 6, 64, 96
    f, y, x, c = np.meshgrid(np.arange(frames_n), np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    frames = ((f * 7 + y * 3 + x * 5 + c * 11) % 251).astype(np.uint8)  # distinct neighbours in every axis
    rows, grid_thw = _process(video_processor, frames, do_resize=False, do_rescale=False, do_normalize=False)
    assert rows.dtype == torch.uint8 and grid_thw == [3, 4, 6]
    t, h, w = token_grid(grid_thw)
    groups = group_view(rows, grid_thw)
    video = torch.from_numpy(frames)  # [frame, y, x, c]
    for tt in range(t):
        for g in range(h * w):
            gh, gw = divmod(g, w)
            block = video[2 * tt : 2 * tt + 2, 32 * gh : 32 * gh + 32, 32 * gw : 32 * gw + 32]  # [2, 32, 32, 3]
            # 2x2 patches of 16 px in raster order, each (channel, frame, y, x)
            patches = block.reshape(2, 2, 16, 2, 16, 3).permute(1, 3, 5, 0, 2, 4).reshape(4, -1)
            assert torch.equal(groups[tt, g].view(4, -1), patches)
    assert torch.equal(rows[group_rows(torch.tensor([5]))], groups.view(-1, groups.shape[-1])[5].view(4, -1))


@pytest.fixture(scope="module")
def raw_and_normalised(video_processor):
    """Per generated video kind: (uint8 rows as vLLM ships them with mm_device_do_normalize, the HF-normalised
    fp32 rows, grid, the processor's PixelNorm)."""
    from vllm_vtprune.testing.videos import KINDS, make_frames

    p = video_processor
    norm = PixelNorm(tuple(p.image_mean), tuple(p.image_std), p.rescale_factor)
    out = []
    for kind in KINDS:
        frames = make_frames(kind, 12, 128, 96)
        raw, grid_thw = _process(p, frames, do_rescale=False, do_normalize=False)
        normalised, _ = _process(p, frames)
        out.append((raw, normalised, grid_thw, norm))
    return out


def test_levels_are_recovered_exactly(raw_and_normalised) -> None:
    for raw, normalised, _, norm in raw_and_normalised:
        assert normalised.dtype == torch.float32
        assert pixel_levels(raw) is raw
        assert torch.equal(pixel_levels(normalised, norm), raw)
        assert torch.equal(pixel_levels(normalised.bfloat16(), norm), raw)
        assert torch.equal(pixel_levels(raw.float()), raw)
        with pytest.raises(ValueError, match="not 8-bit levels under no normalisation"):
            pixel_levels(normalised)
        with pytest.raises(ValueError, match="not 8-bit levels under PixelNorm"):
            pixel_levels(raw.float(), norm)


def test_selections_do_not_depend_on_the_representation(raw_and_normalised) -> None:
    for raw, normalised, grid_thw, norm in raw_and_normalised:
        for method, options in PRE_VARIANTS:
            cfg = PruneConfig(method=method, retention=0.3, options=options)
            want = select_pretower(raw, [grid_thw], [cfg])[0]
            for px in (normalised, normalised.bfloat16()):
                got = select_pretower(px, [grid_thw], [cfg], norm=norm)[0]
                assert torch.equal(got.kept, want.kept) and torch.equal(got.slice_source, want.slice_source)
