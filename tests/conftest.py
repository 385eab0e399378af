"""Shared fixtures: the tiny Qwen3-VL checkpoint and the generated videos, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / ".artifacts"


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from vllm_vtprune.testing.tiny_qwen3vl import build_tiny_qwen3vl

    return str(build_tiny_qwen3vl(ARTIFACTS / "tiny"))


@pytest.fixture(scope="session")
def videos() -> dict[str, Path]:
    from vllm_vtprune.testing.videos import video_suite

    return video_suite(ARTIFACTS / "videos")
