"""The plugin refuses, naming what is missing, on a vLLM it was not verified with; it activates on this one."""

from __future__ import annotations

import pytest
import vllm

from vllm_vtprune import compat


def test_the_installed_vllm_has_everything_the_plugin_needs():
    assert compat.missing_symbols() == []
    compat.check()


def test_a_missing_symbol_is_named(monkeypatch):
    monkeypatch.setattr(compat, "SYMBOLS", (*compat.SYMBOLS, "vllm.model_executor.models.qwen3_vl:Gone.method"))
    with pytest.raises(compat.IncompatibleVllmError, match="qwen3_vl:Gone.method"):
        compat.check()


def test_a_hook_call_that_disappeared_is_named(monkeypatch):
    path = "vllm.v1.worker.gpu_model_runner:GPUModelRunner._gather_mm_embeddings"
    monkeypatch.setattr(compat, "HOOK_CALLS", ((path, "a_call_vllm_never_makes"),))
    with pytest.raises(compat.IncompatibleVllmError, match="_gather_mm_embeddings calling a_call_vllm_never_makes"):
        compat.check()


def test_an_unverified_version_is_refused(monkeypatch):
    monkeypatch.setattr(vllm, "__version__", "0.34.0")
    with pytest.raises(compat.IncompatibleVllmError, match=r"supports vLLM 0\.32\.x, 0\.33\.x; found 0\.34\.0"):
        compat.check()


def test_require_names_the_symbol():
    with pytest.raises(compat.IncompatibleVllmError, match="no vllm.engine.arg_utils:EngineArgs.nope"):
        compat.require("vllm.engine.arg_utils:EngineArgs.nope")
