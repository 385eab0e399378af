"""Fixtures for the ViT-reuse tests: vLLM's Qwen3-VL vision tower built standalone (CPU, fp32) and video pixels."""

from __future__ import annotations

import functools

import pytest


@pytest.fixture(scope="session")
def video_pixels(tiny_model: str):
    """``pixels(kind, num_frames, width, height, of=None) -> (pixel_values_videos [T*H*W, C] fp32, [T, H, W])`` via the
    checkpoint's own Qwen3-VL video processor (no frame sampling)."""
    from transformers import AutoProcessor

    from vllm_vtprune.testing.videos import make_frames

    processor = AutoProcessor.from_pretrained(tiny_model).video_processor

    @functools.cache
    def pixels(kind: str, num_frames: int, width: int = 128, height: int = 96, of: int | None = None):
        """The first ``num_frames`` frames of a ``of``-frame clip (default: the whole clip)."""
        frames = make_frames(kind, of or num_frames, width, height)[:num_frames]
        out = processor(videos=[frames], do_sample_frames=False, return_tensors="pt")
        return out["pixel_values_videos"].float(), [int(x) for x in out["video_grid_thw"][0].tolist()]

    return pixels
