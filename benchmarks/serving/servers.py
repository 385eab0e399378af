"""Server command lines, and starting several servers side by side.

Vanilla and plugin servers run *at the same time* and the suite alternates between them, so both see the
same machine state (other jobs, thermal state, page cache) within each repeat; only one is loaded at a time.
Vanilla is the same command without ``--plugin`` and with ``VLLM_PLUGINS=""`` (no plugin code loaded).
"""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vllm_vtprune.testing.server import CPU_ENV, VllmServer

from .plan import PLUGIN, VANILLA

VANILLA_ENV = {"VLLM_PLUGINS": ""}


@dataclass
class ServerSpec:
    name: str  # VANILLA or PLUGIN (or a streaming-only extra)
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def command(self, model: str) -> str:
        """The exact shell command, for the report (the harness adds only --host/--port)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**CPU_ENV, **self.env}.items())
        return f"{env} vllm serve {shlex.quote(model)} {shlex.join(self.args)}".strip()


def common_args(builtin: bool, max_videos: int, media_dir: Path, extra: list[str]) -> list[str]:
    """Arguments both servers share. The built-in random checkpoints are bf16; vLLM runs them in float32
    because bf16 matmuls are ~2x slower on this CPU. ``--enable-prompt-tokens-details`` makes ``usage``
    report prefix-cache hits (streaming scenario); ``--allowed-local-media-path`` lets ``vllm bench serve``
    send the dataset's file paths. ``--mm-processor-cache-gb 0``: every clip is unique, so the processor
    cache never hits; left on, it grows each server's RSS with the number of requests it has seen (the
    plugin server sees several times more than vanilla), which would make peak RSS meaningless.
    ``--block-size 32`` for the built-in models (this CPU backend's smallest preferred size; its default is 128,
    GPUs use 16): a prefix-cache hit ends at a block boundary, so with 128-token blocks a chunked streaming
    turn recomputes up to 127 tokens of history, which would bury what pruning saves per turn."""
    args = ["--max-model-len", "8192" if builtin else "32768",
            "--limit-mm-per-prompt", json.dumps({"video": max_videos, "image": 1}),
            "--enable-prompt-tokens-details", "--allowed-local-media-path", str(media_dir.resolve()),
            "--mm-processor-cache-gb", "0"]
    if builtin:
        args += ["--dtype", "float32", "--enforce-eager", "--block-size", "32"]
    return args + extra


def server_specs(common: list[str], plugin_args: list[str]) -> dict[str, ServerSpec]:
    return {
        VANILLA: ServerSpec(VANILLA, list(common), dict(VANILLA_ENV)),
        PLUGIN: ServerSpec(PLUGIN, [*plugin_args, *common]),
    }


@contextlib.contextmanager
def side_by_side(model: str, specs: Mapping[str, ServerSpec], log_dir: Path,
                 startup_timeout: float = 900.0) -> Iterator[dict[str, VllmServer]]:
    """Start every server in parallel (start-up is mostly waiting on imports and profiling), stop all at exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    servers = {name: VllmServer(model, s.args, env=s.env, log_path=log_dir / f"server-{name}.log",
                                startup_timeout=startup_timeout) for name, s in specs.items()}
    with contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(len(servers)) as pool:
            futures = {name: pool.submit(s.__enter__) for name, s in servers.items()}
        errors = []
        for name, fut in futures.items():
            if fut.exception() is None:
                stack.push(servers[name].__exit__)
            else:
                errors.append(f"{name}: {fut.exception()}")
        if errors:
            raise RuntimeError("server start-up failed:\n" + "\n".join(errors))
        yield servers


def parse_extra(text: str | None) -> list[str]:
    return shlex.split(text) if text else []


__all__ = ["PLUGIN", "VANILLA", "ServerSpec", "common_args", "parse_extra", "server_specs", "side_by_side"]
