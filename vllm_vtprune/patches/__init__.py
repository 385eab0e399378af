"""Every change the plugin makes to vLLM (and its libraries) at run time, one module each, applied from one place.

- ``engine_args_cli`` wraps ``EngineArgs.add_cli_args``/``from_cli_args``/``create_engine_config``: the
  ``--plugin vtprune`` and ``--vtprune-*`` flags, activation from ``additional_config``, and vLLM's
  multimodal-pruning hooks turned on for the engine. Remove when vLLM lets plugins declare CLI options.
- ``request_mm_kwargs`` wraps ``online_renderer.validate_request_mm_kwargs``: lets ``mm_processor_kwargs.vtprune``
  through without ``--trust-request-mm-kwargs``. Remove when vLLM lets a plugin declare safe request kwargs.
- ``admitted_video_metrics`` wraps ``InputProcessor.process_inputs``: counts a request's videos once vLLM
  accepted it. Remove when vLLM offers plugins an admission hook.
- ``encoder_cache_reset`` wraps both runners' ``reset_encoder_cache``: the slice cache and stream state are
  dropped with vLLM's encoder cache. Remove when models get a reset hook.
- ``cpu_runner_pruning_flag`` wraps V1 ``CPUModelRunner.load_model``: the CPU runner never enables the pruning
  hook the plugin places positions through. Remove when vLLM's CPU runner sets the flag.
- ``mrope_cache_size`` replaces ``qwen3_vl.mrope_positions_factor``: keeps the rotary cache at 1x (vLLM sizes it
  4x when pruning is on). Remove when vLLM sizes it by the positions a request can reach.

- ``prometheus_values`` swaps prometheus_client's value class around the creation of the plugin's worker metrics
  only (a context manager that :mod:`vllm_vtprune.metrics` uses; not applied globally). Remove when
  prometheus_client lets a metric choose its value class.

``engine_args_cli`` is applied by :func:`vllm_vtprune.plugin.register` in every process, because the flags must
exist even where the plugin stays dormant; the others by :func:`apply_active`, once per process, when the plugin
activates. Each resolves what it touches through ``vllm_vtprune.compat.require``, so a vLLM that lacks it stops
the plugin with a message naming it.
"""

from __future__ import annotations

from . import (
    admitted_video_metrics,
    cpu_runner_pruning_flag,
    encoder_cache_reset,
    mrope_cache_size,
    request_mm_kwargs,
)


def apply_active() -> None:
    """Apply every patch an active plugin needs in this process (idempotent)."""
    for patch in (request_mm_kwargs, admitted_video_metrics, encoder_cache_reset, cpu_runner_pruning_flag,
                  mrope_cache_size):
        patch.apply()
