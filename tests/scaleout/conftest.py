"""Servers for the scale-out tests, each started once per session (they cost 1-3 minutes each on CI).

- ``tp2_server``: ``vllm serve --plugin vtprune --tensor-parallel-size 2`` (multiprocess executor), with
  DEBUG logging so that every rank logs its selection digest.
- ``ray_serve_app``: ``python -m vllm_vtprune.serve MODEL --replicas 2`` on a local Ray cluster that the
  fixture starts and always tears down (SIGTERM to the CLI, which deletes the app and stops Ray; then any
  process still carrying this run's marker in its environment is killed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vllm_vtprune.serve.routing import REPLICA_HEADER
from vllm_vtprune.testing.server import CPU_ENV, TINY_ARGS, VllmServer, free_port

ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"
PLUGIN_ARGS = ("--plugin", "vtprune", "--vtprune-preset", "vcast", "--enable-prompt-tokens-details",
               "--vtprune-request-overrides", "any")  # the tests pick methods per request


# Without an explicit binding, two CPU workers on this machine fail: "Not enough allowed NUMA nodes to bind
# threads of 2 local CPUWorkers". One core per rank.
TP2_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0|1", "OMP_NUM_THREADS": "1", "VLLM_LOGGING_LEVEL": "DEBUG"}
MARKER = "VTPRUNE_SCALEOUT_RUN"  # environment marker of every process a Ray Serve fixture starts


@pytest.fixture(scope="module")  # stopped when its module is done: no idle engines under later tests
def tp2_server(tiny_model) -> Iterator[VllmServer]:
    ARTIFACTS.mkdir(exist_ok=True)
    with VllmServer(tiny_model, [*PLUGIN_ARGS, "--tensor-parallel-size", "2", *TINY_ARGS], env=TP2_ENV,
                    log_path=ARTIFACTS / "server-tp2.log", startup_timeout=600) as server:
        yield server


@dataclass
class RayServeApp:
    url: str
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _marked_pids(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
    return pids


def _wait_ready(app: RayServeApp, timeout: float, replicas: int) -> None:
    """Until every replica serves: the CLI prints its ready line once ``serve.run`` has all replicas running,
    then unkeyed requests (spread at random) must have reached each of them — so the ingress's router knows
    the whole replica set before any test pins a stream to a replica."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        if app.process.poll() is not None:
            raise RuntimeError(f"vllm_vtprune.serve exited with {app.process.returncode}:\n{app.log()[-6000:]}")
        if " ready on http" in app.log():
            try:
                with urllib.request.urlopen(f"{app.url}/v1/models", timeout=30) as r:
                    seen.add(r.headers[REPLICA_HEADER])
                if len(seen) == replicas:
                    return
                continue
            except OSError:
                pass
        time.sleep(2)
    raise TimeoutError(f"Ray Serve app not ready after {timeout:.0f} s (replicas seen: {seen}):\n{app.log()[-6000:]}")


def _stop(app: RayServeApp, marker: str) -> None:
    if app.process.poll() is None:
        app.process.send_signal(signal.SIGTERM)  # the CLI only: it deletes the app, then stops its Ray cluster
        try:
            app.process.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(app.process.pid, signal.SIGKILL)
            app.process.wait()
    leftovers = _kill_marked(marker)
    if leftovers:
        print(f"ray_serve_app: killed {len(leftovers)} leftover process(es): {leftovers}")


def _kill_marked(marker: str) -> list[int]:
    leftovers = _marked_pids(marker)
    for pid in leftovers:  # processes this test started (they carry its marker), by id
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return leftovers


@pytest.fixture
def isolated_ray(monkeypatch) -> Iterator[str]:
    """For a test whose subprocesses start Ray on their own: a private Ray temp dir (so they neither find nor
    disturb another local cluster) and a marker in their environment, by which leftovers are killed after."""
    marker = f"{MARKER}={uuid.uuid4().hex}"
    ray_tmp = tempfile.mkdtemp(prefix="vtprune-ray-", dir="/tmp")  # short: Ray's socket paths are length-limited
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.setenv(*marker.split("=", 1))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield marker
    _kill_marked(marker)
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_serve_app(tiny_model) -> Iterator[RayServeApp]:
    ARTIFACTS.mkdir(exist_ok=True)
    marker = f"{MARKER}={uuid.uuid4().hex}"
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="vtprune-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "VLLM_VTPRUNE_CONFIG", "VLLM_VTPRUNE_METRICS_DIR")}
    env.update(CPU_ENV)
    env.update({
        "OMP_NUM_THREADS": "1",
        # "auto" pins every replica's worker to core 0 (one core each would need a different mask per replica);
        # unbound, the OS spreads the two replicas over the two cores.
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "RAY_TMPDIR": ray_tmp,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",  # both replicas print the same activation line; Ray would fold them into one
        MARKER: marker.split("=", 1)[1],
    })
    command = [sys.executable, "-m", "vllm_vtprune.serve", tiny_model, "--replicas", "2", "--port", str(port),
               "--", *PLUGIN_ARGS, "--vtprune-slice-cache-mb", "64", *TINY_ARGS]
    log_path = ARTIFACTS / "ray-serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    app = RayServeApp(f"http://127.0.0.1:{port}", log_path, process)
    try:
        _wait_ready(app, timeout=840, replicas=2)
        yield app
    finally:
        _stop(app, marker)
        shutil.rmtree(ray_tmp, ignore_errors=True)
