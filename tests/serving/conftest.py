"""Real ``vllm serve`` processes on localhost, started once per session and shared by the serving tests.

Each server costs 30-60 s to start on the 2-core CI machine, so tests reuse a few servers and vary the
pruning settings per request (``mm_processor_kwargs={"vtprune": ...}``) rather than per server. They run
vLLM's compiled path (no ``--enforce-eager``), the closest this CPU machine gets to what GPU users run;
``tests/adapter/test_runner_positions.py`` covers eager too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vllm_vtprune.testing.chat import VideoChat
from vllm_vtprune.testing.server import TINY_ARGS, VllmServer

ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"


def _serve(model: str, name: str, args: list[str], env: dict[str, str] | None = None) -> Iterator[VllmServer]:
    compiled = [a for a in TINY_ARGS if a != "--enforce-eager"]
    with VllmServer(model, [*args, *compiled], env=env, log_path=ARTIFACTS / f"server-{name}.log") as server:
        yield server


@pytest.fixture(scope="session")
def vanilla_server(tiny_model) -> Iterator[VllmServer]:
    """vLLM with no plugin at all (``VLLM_PLUGINS`` empty loads none)."""
    yield from _serve(tiny_model, "vanilla", [], env={"VLLM_PLUGINS": ""})


@pytest.fixture(scope="session")
def dormant_server(tiny_model) -> Iterator[VllmServer]:
    """The plugin installed and loaded, but not enabled."""
    yield from _serve(tiny_model, "dormant", [])


@pytest.fixture(scope="session")
def plugin_server(tiny_model) -> Iterator[VllmServer]:
    """``--plugin vtprune`` with the V-CAST preset and a slice cache; tests override settings per request, so any
    override is allowed here."""
    yield from _serve(tiny_model, "plugin", ["--plugin", "vtprune", "--vtprune-preset", "vcast",
                                             "--vtprune-slice-cache-mb", "256", "--enable-prompt-tokens-details",
                                             "--vtprune-request-overrides", "any"])


@pytest.fixture(scope="session")
def chunked_server(tiny_model) -> Iterator[VllmServer]:
    """Like ``plugin_server``, but prefill runs in 48-token chunks, so every video is split across steps, and
    requests may only lower their cost (the default policy)."""
    yield from _serve(tiny_model, "chunked", ["--plugin", "vtprune", "--vtprune-preset", "vcast",
                                              "--max-num-batched-tokens", "48", "--max-num-seqs", "4"])


@pytest.fixture(scope="session")
def chat(tiny_model):
    return lambda server: VideoChat(server.url, tiny_model)
