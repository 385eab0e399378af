"""Fixtures for the ViT-reuse tests: vLLM's Qwen3-VL vision tower built standalone (CPU, fp32) and video pixels."""

from __future__ import annotations

import functools

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_tower(tiny_model: str):
    """vLLM's ``Qwen3_VisionTransformer`` with the tiny checkpoint's weights, CPU, fp32, weights packed by vLLM's
    CPU GEMM dispatch exactly as when served."""
    from vllm_vtprune.testing.tiny_qwen3vl import tiny_config
    from vllm_vtprune.vision.standalone import build_vision_tower, release_parallel_state

    tower = build_vision_tower(tiny_config(), checkpoint=tiny_model, dtype=torch.float32)
    yield tower
    release_parallel_state()


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


def _stock(tower, pixel_values: torch.Tensor, grid: list[list[int]]) -> list[torch.Tensor]:
    """What vLLM 0.32.0's ``_process_video_input`` does: one tower call, split per video."""
    with torch.inference_mode():
        out = tower(pixel_values, grid_thw=torch.tensor(grid))
    return list(out.split([t * h * w // 4 for t, h, w in grid]))


@pytest.fixture(scope="session")
def stock():
    """``stock(tower, pixel_values, grid) -> per-video outputs`` of the unmodified tower call."""
    return _stock
