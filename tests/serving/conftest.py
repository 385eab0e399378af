"""Real ``vllm serve`` processes on localhost, started once per session and shared by the serving tests.

Each server costs 30-60 s to start on the 2-core CI machine, so tests reuse a few servers and vary the
pruning settings per request (``mm_processor_kwargs={"vtprune": ...}``) rather than per server. They run
vLLM's compiled path (no ``--enforce-eager``), the closest this CPU machine gets to what GPU users run;
``tests/adapter/test_runner_positions.py`` covers eager too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from vllm_vtprune.testing.chat import VideoChat
from vllm_vtprune.testing.server import TINY_ARGS, VllmServer
from vllm_vtprune.testing.tiny_qwen3vl import DEFAULT_ARCH, build_tiny_qwen3vl

ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"


@pytest.fixture(scope="session")
def arch(request) -> str:
    """The architecture ``vanilla_server``, ``plugin_server`` and ``chunked_server`` run. Tests that hold for
    every architecture the plugin serves take ``@pytest.mark.parametrize("arch", tuple(ARCHITECTURES),
    indirect=True)``; every other test runs on the dense Qwen3-VL."""
    return getattr(request, "param", DEFAULT_ARCH)


def _serve(model: str, name: str, args: list[str], env: dict[str, str] | None = None) -> VllmServer:
    compiled = [a for a in TINY_ARGS if a != "--enforce-eager"]
    return VllmServer(model, [*args, *compiled], env=env, log_path=ARTIFACTS / f"server-{name}.log")


# What each kind of server runs, besides the model.
KINDS = {
    # vLLM with no plugin at all (``VLLM_PLUGINS`` empty loads none).
    "vanilla": ([], {"VLLM_PLUGINS": ""}),
    # The V-CAST preset and a slice cache; tests override settings per request, so any override is allowed.
    "plugin": (["--plugin", "vtprune", "--vtprune-preset", "vcast", "--vtprune-slice-cache-mb", "256",
                "--enable-prompt-tokens-details", "--vtprune-request-overrides", "any"], None),
    # V-CAST at retention 0.6, prefill in 64-token chunks (a divisor of the hybrid models' 256-token cache
    # blocks), so every video is split across steps, and requests may only lower their cost (the default
    # policy). Hybrid models keep prefix-cache snapshots only where a chunk ends, so this is also the server
    # their prefix hits are tested on.
    "chunked": (["--plugin", "vtprune", "--vtprune-preset", "vcast", "--vtprune-retention", "0.6",
                 "--max-num-batched-tokens", "64", "--max-num-seqs", "4", "--enable-prompt-tokens-details"], None),
}


class _Servers:
    """Running servers: the dense model's for the whole session, another architecture's until the tests move
    on to the next one (pytest groups the parametrized tests by architecture), so at most two sets run."""

    def __init__(self, tiny_model: str) -> None:
        self.tiny_model = tiny_model
        self.dense: dict[str, VllmServer] = {}
        self.family: dict[str, VllmServer] = {}
        self.family_arch: str | None = None
        self.stacks = {"dense": contextlib.ExitStack(), "family": contextlib.ExitStack()}

    def get(self, arch: str, kind: str) -> VllmServer:
        args, env = KINDS[kind]
        if arch == DEFAULT_ARCH:
            if kind not in self.dense:
                self.dense[kind] = self.stacks["dense"].enter_context(_serve(self.tiny_model, kind, args, env))
            return self.dense[kind]
        if arch != self.family_arch:
            self.stacks["family"].close()
            self.family, self.family_arch = {}, arch
        if kind not in self.family:
            model = str(build_tiny_qwen3vl(ARTIFACTS / f"tiny-{arch}", arch=arch))
            self.family[kind] = self.stacks["family"].enter_context(_serve(model, f"{kind}-{arch}", args, env))
        return self.family[kind]

    def close(self) -> None:
        for stack in self.stacks.values():
            stack.close()


# Package scope (this folder is a package for it): the servers stop when the serving tests are done, so the
# engines started after them (offline LLMs, towers) do not compete with idle servers for memory.
@pytest.fixture(scope="package")
def servers(tiny_model) -> Iterator[_Servers]:
    running = _Servers(tiny_model)
    yield running
    running.close()


@pytest.fixture
def vanilla_server(servers, arch) -> VllmServer:
    return servers.get(arch, "vanilla")


@pytest.fixture
def plugin_server(servers, arch) -> VllmServer:
    return servers.get(arch, "plugin")


@pytest.fixture
def chunked_server(servers, arch) -> VllmServer:
    return servers.get(arch, "chunked")


@pytest.fixture(scope="module")
def dormant_server(tiny_model) -> Iterator[VllmServer]:
    """The plugin installed and loaded, but not enabled."""
    with _serve(tiny_model, "dormant", []) as server:
        yield server


@pytest.fixture(scope="session")
def chat():
    return lambda server: VideoChat(server.url, server.model)
