"""Keeps Qwen3-VL's rotary cache at its normal size while the plugin uses vLLM's pruning hooks.

Why: with vLLM's multimodal-pruning hooks on, ``qwen3_vl.mrope_positions_factor`` sizes the M-RoPE cos/sin cache
for 4x ``max_position_embeddings`` (vLLM's EVS lets a pruned prompt reach positions beyond the model's limit):
512 MiB instead of 128 MiB on Qwen3-VL-8B. The plugin refuses in the API server any prompt whose *unpruned*
positions exceed ``max_position_embeddings``, so the normal size is always enough.

Remove when: vLLM sizes the cache by the positions a request can actually reach.
"""

from __future__ import annotations

from vllm_vtprune.compat import require


def apply() -> None:
    module = require("vllm.model_executor.models.qwen3_vl")
    original = require("vllm.model_executor.models.qwen3_vl:mrope_positions_factor")
    if getattr(original, "_vtprune", False):
        return

    def mrope_positions_factor(vllm_config) -> int:
        return 1

    mrope_positions_factor._vtprune = True
    module.mrope_positions_factor = mrope_positions_factor
