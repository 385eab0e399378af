"""Shared fixtures for the tests of ``vllm_vtprune.testing``."""

from pathlib import Path

import pytest

from vllm_vtprune.testing.tiny_qwen3vl import ARCHITECTURES, DEFAULT_ARCH, build_tiny_qwen3vl

FAMILY_ARCHS = tuple(arch for arch in ARCHITECTURES if arch != DEFAULT_ARCH)  # built on the dense Qwen3-VL


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny seed-0 checkpoint for the whole session (built in a couple of seconds)."""
    return build_tiny_qwen3vl(tmp_path_factory.mktemp("ckpt") / "tiny", size="tiny", seed=0)


@pytest.fixture(scope="session")
def family_checkpoints(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict[str, Path]:
    """A tiny seed-0 checkpoint of every architecture, keyed by ``arch`` (the dense one is ``tiny_checkpoint``)."""
    root = tmp_path_factory.mktemp("family")
    return {DEFAULT_ARCH: tiny_checkpoint} | {arch: build_tiny_qwen3vl(root / arch, arch=arch) for arch in FAMILY_ARCHS}
