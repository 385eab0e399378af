"""Turning the plugin on in a process: model registration, and the checks that guard it."""

from __future__ import annotations

import multiprocessing
import os

from vllm_vtprune.log import get_logger
from vllm_vtprune.settings import ENV_VAR, VtpruneSettings

logger = get_logger(__name__)

# vLLM's architecture name -> our subclass of it (registered under the same name, so every name-keyed hook of
# vLLM, e.g. the hybrid models' config, still applies).
SUPPORTED_ARCHITECTURES = (
    "Qwen3VLForConditionalGeneration",
    "Qwen3VLMoeForConditionalGeneration",
    "Qwen3_5ForConditionalGeneration",
    "Qwen3_5MoeForConditionalGeneration",
)
MODEL_OVERRIDES = {name: f"vllm_vtprune.model:Vtprune{name}" for name in SUPPORTED_ARCHITECTURES}
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

    from vllm_vtprune import compat, patches

    compat.check()
    for arch, cls in MODEL_OVERRIDES.items():
        ModelRegistry.register_model(arch, cls)
    patches.apply_active()
    _active = settings
    logger.info("vtprune active in process %s (pid %d): %s",
                multiprocessing.current_process().name, os.getpid(), settings.to_json())


# vLLM calls a model's multimodal-pruning hooks (``recompute_mrope_positions``) only while its video-pruning
# switch is on. The plugin places pruned tokens through those hooks, so it turns the switch on for its engines;
# the method and rate vLLM would use are never read (the plugin's processor and model replace every use).
_HOOKS_METHOD, _HOOKS_RATE = "evs", 0.5


def route_through_pruning_hooks(engine_args) -> None:
    """Turn on vLLM's multimodal-pruning hooks for the engine these arguments build."""
    if getattr(engine_args, "_vtprune_hooks", False):
        return
    if engine_args.video_pruning_rate:
        raise ValueError("--video-pruning-rate is vLLM's own EVS; with --plugin vtprune use --vtprune-method evs "
                         "--vtprune-retention R instead")
    engine_args.video_pruning_method = _HOOKS_METHOD
    engine_args.video_pruning_rate = _HOOKS_RATE
    engine_args._vtprune_hooks = True


def check_model_supported(vllm_config) -> None:
    archs = vllm_config.model_config.architectures or []
    if not set(archs) & set(MODEL_OVERRIDES):
        raise ValueError(f"--plugin vtprune supports {list(SUPPORTED_ARCHITECTURES)}; this model is {archs}")
