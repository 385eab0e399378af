"""Turning the plugin on in a process: model registration, and the checks that guard it."""

from __future__ import annotations

import multiprocessing
import os

from vllm_vtprune.log import get_logger
from vllm_vtprune.settings import ENV_VAR, VtpruneSettings

logger = get_logger(__name__)

# Architecture -> our subclass. Qwen3-VL dense only for now (MoE has its own processor registration).
MODEL_OVERRIDES = {
    "Qwen3VLForConditionalGeneration": "vllm_vtprune.model:VtpruneQwen3VLForConditionalGeneration",
}
_active: VtpruneSettings | None = None


def activate(settings: VtpruneSettings) -> None:
    """Enable the plugin here and in every process started from here (engine core, workers, Ray workers)."""
    from vllm_vtprune.metrics import api_server_metrics

    os.environ[ENV_VAR] = settings.to_json()
    activate_in_process(settings)
    api_server_metrics()  # before the workers start: it creates the directory their metrics go to


def activate_in_process(settings: VtpruneSettings) -> None:
    global _active
    if _active == settings:
        return
    from vllm import ModelRegistry

    from vllm_vtprune.patches import request_mm_kwargs

    for arch, cls in MODEL_OVERRIDES.items():
        ModelRegistry.register_model(arch, cls)
    request_mm_kwargs.apply()
    _active = settings
    logger.info("vtprune active in process %s (pid %d): %s",
                multiprocessing.current_process().name, os.getpid(), settings.to_json())


def check_model_supported(vllm_config) -> None:
    archs = vllm_config.model_config.architectures or []
    if not set(archs) & set(MODEL_OVERRIDES):
        raise ValueError(f"--plugin vtprune supports {sorted(MODEL_OVERRIDES)}; this model is {archs}")
