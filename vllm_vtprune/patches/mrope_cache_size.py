"""Keeps Qwen3-VL's rotary cache at its normal size while the plugin uses vLLM's pruning hooks.

Why: with vLLM's multimodal-pruning hooks on, ``mrope_positions_factor`` (qwen3_vl, imported by qwen3_vl_moe and
qwen3_5) sizes the M-RoPE cos/sin cache
for 4x ``max_position_embeddings`` (vLLM's EVS lets a pruned prompt reach positions beyond the model's limit):
512 MiB instead of 128 MiB on Qwen3-VL-8B. The plugin refuses in the API server any prompt whose *unpruned*
positions exceed ``max_position_embeddings``, so the normal size is always enough.

Remove when: vLLM sizes the cache by the positions a request can actually reach.
"""

from __future__ import annotations

from vllm_vtprune.compat import require

# Every module whose decoder layers size the cache through the function (they import it by name).
_MODULES = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5")


def apply() -> None:
    def mrope_positions_factor(vllm_config) -> int:
        return 1

    for name in _MODULES:
        module = require(f"vllm.model_executor.models.{name}")
        require(f"vllm.model_executor.models.{name}:mrope_positions_factor")
        module.mrope_positions_factor = mrope_positions_factor
