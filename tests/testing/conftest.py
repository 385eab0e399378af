"""Shared fixtures for the tests of ``vllm_vtprune.testing``."""

from pathlib import Path

import pytest

from vllm_vtprune.testing.tiny_qwen3vl import build_tiny_qwen3vl


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny seed-0 checkpoint for the whole session (built in a couple of seconds)."""
    return build_tiny_qwen3vl(tmp_path_factory.mktemp("ckpt") / "tiny", size="tiny", seed=0)
