"""Shared fixtures: the tiny Qwen3-VL checkpoint and the generated videos, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ARTIFACTS = Path(__file__).resolve().parent.parent / ".artifacts"
TESTS = Path(__file__).resolve().parent
# Tests that start vLLM engines or servers (a minute or more each) are marked ``server``; ``make test-fast``
# (``pytest -m "not server"``) runs the rest in a few minutes.
ENGINE_TESTS = ("serving/", "scaleout/", "accuracy/test_accuracy_serving.py", "benchmarks/test_smoke.py",
                "adapter/test_runner_positions.py", "testing/test_tiny_qwen3vl_vllm.py",
                "testing/test_tiny_family_vllm.py", "testing/test_demo.py")


def _server_env() -> dict[str, str]:
    """The variables that decide whether and how a server started later loads the plugin."""
    return {k: v for k, v in os.environ.items()
            if k in ("VLLM_PLUGINS", "PROMETHEUS_MULTIPROC_DIR") or k.startswith("VLLM_VTPRUNE")}


@pytest.fixture(autouse=True)
def no_environment_leaks():
    """A test that changes ``os.environ`` for good changes every server started after it (a leaked
    ``VLLM_PLUGINS=""`` once turned the plugin off for the rest of a run): fail the test that does it."""
    before = _server_env()
    yield
    after = _server_env()
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed, f"this test left environment variables changed: {sorted(changed)}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.relative_to(TESTS).as_posix().startswith(ENGINE_TESTS):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from vllm_vtprune.testing.tiny_qwen3vl import build_tiny_qwen3vl

    return str(build_tiny_qwen3vl(ARTIFACTS / "tiny"))


@pytest.fixture(scope="session")
def videos() -> dict[str, Path]:
    from vllm_vtprune.testing.videos import video_suite

    return video_suite(ARTIFACTS / "videos")


@pytest.fixture(scope="session")
def tiny_tower(tiny_model: str):
    """vLLM's ``Qwen3_VisionTransformer`` with the tiny checkpoint's weights, CPU, fp32, weights packed by vLLM's
    CPU GEMM dispatch exactly as when served."""
    from vllm_vtprune.testing.tiny_qwen3vl import tiny_config
    from vllm_vtprune.vision.standalone import build_vision_tower, release_parallel_state

    tower = build_vision_tower(tiny_config(), checkpoint=tiny_model, dtype=torch.float32)
    yield tower
    release_parallel_state()


def _stock(tower, pixel_values: torch.Tensor, grid: list[list[int]]) -> list[torch.Tensor]:
    """What vLLM 0.32.0's ``_process_video_input`` does: one tower call, split per video."""
    with torch.inference_mode():
        out = tower(pixel_values, grid_thw=torch.tensor(grid))
    return list(out.split([t * h * w // 4 for t, h, w in grid]))


@pytest.fixture(scope="session")
def stock():
    """``stock(tower, pixel_values, grid) -> per-video outputs`` of the unmodified tower call."""
    return _stock
