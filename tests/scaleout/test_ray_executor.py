"""Issue 7: vLLM's Ray executor.

On this CPU-only machine vLLM refuses the Ray executor, so the first test pins that exact upstream error.
The others show that what a Ray worker receives from vLLM — the ``VLLM_*`` environment vLLM copies to Ray
workers (computed by vLLM's own functions) and the pickled ``VllmConfig`` — is enough to activate the plugin
in a fresh process, which is all a Ray worker on another node has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from vllm_vtprune.settings import VtpruneSettings
from vllm_vtprune.testing.server import CPU_ENV, TINY_ARGS, run_serve_expecting_failure

OUR_CLASS = "vllm_vtprune.model:VtpruneQwen3VLForConditionalGeneration"
# The plugin's per-server variables: the process under test must start without them, as a user's would.
PLUGIN_ENV = ("VLLM_VTPRUNE_CONFIG", "VLLM_VTPRUNE_METRICS_DIR")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV and k != "RAY_ADDRESS"}
    return {**env, **CPU_ENV, **extra}


def test_ray_executor_is_refused_on_cpu_with_vllms_own_error(tiny_model, isolated_ray):
    """Blocked upstream: vLLM 0.32.0's CPU platform has no ``ray_device_key``. Runs on GPU machines only."""
    out = run_serve_expecting_failure(tiny_model, ["--plugin", "vtprune", "--distributed-executor-backend", "ray",
                                                   *TINY_ARGS], timeout=400)
    assert "ValueError: current platform cpu does not support ray." in out
    assert "initialize_ray_cluster" in out  # raised by vllm/v1/executor/ray_utils.py, not by the plugin


# Runs in a process where the plugin is enabled the way users enable it, then records what vLLM would ship to
# its Ray workers: the environment (vLLM's own functions, for both Ray executors) and the pickled VllmConfig.
DRIVER = textwrap.dedent("""
    import json, os, pickle, sys

    from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.platforms import current_platform
    from vllm.ray.ray_env import get_env_vars_to_copy
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    from vllm.v1.executor.ray_env_utils import get_driver_env_vars
    from vllm.v1.executor.ray_utils import WORKER_SPECIFIC_ENV_VARS

    model, out = sys.argv[1], sys.argv[2]

    def from_cli():
        # `vllm serve MODEL --plugin vtprune ...`: vLLM's own parser (building it loads the plugin, which adds
        # its flags and wraps EngineArgs.from_cli_args), then vLLM's own translation to engine arguments
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(
            [model, "--model", model, "--plugin", "vtprune", "--vtprune-preset", "stc",
             "--max-model-len", "8192", "--enforce-eager"])
        return AsyncEngineArgs.from_cli_args(args)

    ways = {
        "cli": from_cli,
        # LLM(model, additional_config={"vtprune": {...}})
        "additional_config": lambda: EngineArgs(model=model, max_model_len=8192, enforce_eager=True,
                                                additional_config={"vtprune": {"method": "vcast", "retention": 0.3}}),
    }
    result = {}
    for name, engine_args in ways.items():
        config = engine_args().create_engine_config()
        # RayDistributedExecutor (VLLM_USE_RAY_V2_EXECUTOR_BACKEND=0): update_environment_variables() on workers
        names = get_env_vars_to_copy(exclude_vars=WORKER_SPECIFIC_ENV_VARS,
                                     additional_vars=set(current_platform.additional_env_vars), destination="workers")
        v1 = {n: os.environ[n] for n in names if n in os.environ}
        # RayExecutorV2 (the default in 0.32.0): initialize_worker(driver_env_vars=...)
        v2 = get_driver_env_vars(worker_specific_vars=WORKER_SPECIFIC_ENV_VARS)
        with open(f"{out}/{name}.pkl", "wb") as f:
            pickle.dump(config, f)
        result[name] = {"settings": config.additional_config["vtprune"], "ray_executor": v1, "ray_executor_v2": v2}
    with open(f"{out}/driver.json", "w") as f:
        json.dump(result, f)
""")

# What a Ray worker does with that: vLLM's WorkerWrapperBase.init_worker calls load_general_plugins(), then
# the worker resolves the model class from the (unpickled) VllmConfig.
WORKER = textwrap.dedent("""
    import json, pickle, sys

    from vllm.plugins import load_general_plugins

    load_general_plugins()
    from vllm.model_executor.model_loader.utils import get_model_cls
    from vllm_vtprune import activation

    with open(sys.argv[1], "rb") as f:
        config = pickle.load(f)
    cls = get_model_cls(config.model_config)
    active = getattr(activation, "_active", None)
    print("RESULT " + json.dumps({
        "model_class": f"{cls.__module__}:{cls.__qualname__}",
        "active": active.to_dict() if active is not None else None,
        "additional_config": config.additional_config.get("vtprune"),
    }))
""")


WAYS = ("cli", "additional_config")
EXECUTORS = ("ray_executor_v2", "ray_executor")


@pytest.fixture(scope="module")
def shipped(tiny_model, tmp_path_factory) -> dict[tuple[str, str], tuple[dict, dict, subprocess.CompletedProcess]]:
    """(way, executor) -> (settings, env vLLM ships, the fresh worker process's outcome); workers run in parallel."""
    out = tmp_path_factory.mktemp("ray-driver")
    proc = subprocess.run([sys.executable, "-c", DRIVER, tiny_model, str(out)], env=clean_env(),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    recorded = json.loads((out / "driver.json").read_text())
    workers = {
        (way, executor): subprocess.Popen(
            [sys.executable, "-c", WORKER, str(out / f"{way}.pkl")], env=minimal_env(recorded[way][executor]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for way in WAYS for executor in EXECUTORS
    }
    results = {}
    try:
        for key, worker in workers.items():
            stdout, stderr = worker.communicate(timeout=400)
            results[key] = (recorded[key[0]]["settings"], recorded[key[0]][key[1]],
                            subprocess.CompletedProcess(worker.args, worker.returncode, stdout, stderr))
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                worker.kill()
    return results


def minimal_env(shipped_env: dict[str, str]) -> dict[str, str]:
    """Only what vLLM ships, plus what any process needs to start (no VLLM_* of this machine)."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    return {**base, **shipped_env}


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("way", WAYS)
def test_what_vllm_ships_to_ray_workers_activates_the_plugin_in_a_fresh_process(shipped, way, executor):
    settings, env, proc = shipped[way, executor]
    assert settings["method"] == {"cli": "stc", "additional_config": "vcast"}[way]
    normalized = VtpruneSettings.from_dict(settings).to_dict()
    assert json.loads(env["VLLM_VTPRUNE_CONFIG"]) == normalized  # the carrier is in what vLLM copies

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["model_class"] == OUR_CLASS  # the class the worker would load
    assert result["active"] == normalized
    assert result["additional_config"] == settings  # the pickled VllmConfig carries the settings too
