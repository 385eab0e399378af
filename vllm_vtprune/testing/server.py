"""Start and stop a real ``vllm serve`` on localhost: the demo, the tests and the benchmarks share this."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

# Settings that make the tiny CPU model start quickly and predictably on a 2-core machine.
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "INFO", "OMP_NUM_THREADS": "2"}
TINY_ARGS = ("--max-model-len", "8192", "--enforce-eager", "--limit-mm-per-prompt", '{"video": 2, "image": 1}')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_executable() -> str:
    """The ``vllm`` console script of the running interpreter's environment."""
    return str(Path(sys.executable).parent / "vllm")


class VllmServer:
    """``with VllmServer(model, args) as server: server.url`` runs ``vllm serve model *args``.

    ``startup_timeout``: a compiled (no ``--enforce-eager``) start takes ~45 s on an idle 2-core machine and passed
    300 s on one shared with other suites, so the default leaves room for a busy CI machine."""

    def __init__(self, model: str | Path, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
                 log_path: str | Path | None = None, startup_timeout: float = 600.0):
        self.model = str(model)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [vllm_executable(), "serve", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                        *args]
        self.env = {**os.environ, **CPU_ENV, **(env or {})}
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> VllmServer:
        log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"vllm serve not healthy after {self.startup_timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, 15)  # the whole group: API server, engine core, workers
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()


def run_serve_expecting_failure(model: str | Path, args: Sequence[str], timeout: float = 180.0) -> str:
    """Run ``vllm serve`` that should refuse to start; return its combined output (raises if it started)."""
    cmd = [vllm_executable(), "serve", str(model), "--port", str(free_port()), *args]
    proc = subprocess.run(cmd, env={**os.environ, **CPU_ENV}, capture_output=True, text=True, timeout=timeout)
    if proc.returncode == 0:
        raise AssertionError(f"vllm serve {' '.join(args)} exited 0")
    return proc.stdout + proc.stderr
