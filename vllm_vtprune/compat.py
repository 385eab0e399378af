"""Every private vLLM symbol the plugin relies on, checked once when the plugin activates.

vLLM's internals change between releases. Rather than run on a version it was not verified against (and serve
unpruned, or wrong positions, without a word), the plugin refuses to start there, naming what is missing.
Verified: vLLM 0.32.x (CPU and GPU builds) and 0.33.x (GPU; no CPU build exists) — see README "Supported
versions" for how 0.33 was checked.
"""

from __future__ import annotations

import importlib
import inspect

SUPPORTED_VERSIONS = ("0.32.", "0.33.")

# "module:attribute.attribute" for each symbol; the patches and adapter resolve theirs through ``require``.
SYMBOLS = (
    "vllm.engine.arg_utils:EngineArgs.add_cli_args",
    "vllm.engine.arg_utils:EngineArgs.from_cli_args",
    "vllm.engine.arg_utils:EngineArgs.create_engine_config",
    "vllm.renderers.online_renderer:validate_request_mm_kwargs",
    "vllm.v1.engine.input_processor:InputProcessor.process_inputs",
    "vllm.multimodal.hasher:MultiModalHasher.hash_kwargs",
    "vllm.multimodal.encoder_budget:MultiModalBudget",
    "vllm.multimodal.processing:PromptUpdateDetails.select_token_id",
    "vllm.utils.gpu_sync_debug:gpu_sync_allowed",
    "vllm.model_executor.models.interfaces:supports_multimodal_pruning",
    "vllm.model_executor.models.qwen3_vl:mrope_positions_factor",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLDummyInputsBuilder",
    "vllm.model_executor.models.qwen3_vl_moe:Qwen3VLMoeForConditionalGeneration",
    "vllm.model_executor.models.qwen3_vl_moe:Qwen3VLMoeProcessingInfo",
    "vllm.model_executor.models.qwen3_vl_moe:mrope_positions_factor",
    "vllm.model_executor.models.qwen3_5:Qwen3_5ForConditionalGeneration",
    "vllm.model_executor.models.qwen3_5:Qwen3_5MoeForConditionalGeneration",
    "vllm.model_executor.models.qwen3_5:Qwen3_5ProcessingInfo",
    "vllm.model_executor.models.qwen3_5:Qwen3_5MoeProcessingInfo",
    "vllm.model_executor.models.qwen3_5:mrope_positions_factor",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLProcessingInfo.get_mm_max_tokens_per_item",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLProcessingInfo.get_max_video_tokens",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLProcessingInfo.get_video_processor",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLProcessingInfo._merge_and_resolve_mm_processor_kwargs",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor.apply",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor.get_dummy_mm_inputs",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor._get_mm_hashes",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor._apply_hf_processor_main",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor._get_mm_fields_config",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor._get_prompt_updates",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration._parse_and_validate_multimodal_inputs",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration._process_image_input",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration._process_video_input",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.get_mrope_input_positions",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.recompute_mrope_positions",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.get_encoder_cudagraph_config",
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner.reset_encoder_cache",
    "vllm.v1.worker.gpu.model_runner:GPUModelRunner.reset_encoder_cache",
    "vllm.v1.worker.cpu_model_runner:CPUModelRunner.load_model",
)

# Where vLLM calls the pruning hook the plugin places positions through: (function, text its source contains).
HOOK_CALLS = (
    ("vllm.v1.worker.gpu_model_runner:GPUModelRunner._gather_mm_embeddings", "recompute_mrope_positions"),
    ("vllm.v1.worker.gpu.model_states.mm_pruning:MultiModalPruner.recompute", "recompute_mrope_positions"),
    ("vllm.v1.worker.gpu.model_states.default:DefaultModelState.prepare_inputs_embeds", "mm_pruner.recompute"),
)


class IncompatibleVllmError(RuntimeError):
    """The installed vLLM lacks something the plugin needs; the message names it."""


def _resolve(path: str) -> object:
    module_name, _, attributes = path.partition(":")
    obj: object = importlib.import_module(module_name)
    for name in filter(None, attributes.split(".")):
        obj = getattr(obj, name)
    return obj


def require(path: str) -> object:
    """The vLLM object at ``module:attribute.path``, or IncompatibleVllmError naming it."""
    try:
        return _resolve(path)
    except (ImportError, AttributeError) as e:
        raise IncompatibleVllmError(f"--plugin vtprune: this vLLM has no {path} ({e})") from e


def missing_symbols() -> list[str]:
    """Every required symbol or hook call the installed vLLM lacks."""
    missing = []
    for path in SYMBOLS:
        try:
            _resolve(path)
        except (ImportError, AttributeError):
            missing.append(path)
    for path, text in HOOK_CALLS:
        try:
            if text not in inspect.getsource(_resolve(path)):
                missing.append(f"{path} calling {text}")
        except (ImportError, AttributeError, OSError, TypeError):
            missing.append(path)
    return missing


def check() -> None:
    """Refuse loudly on a vLLM the plugin was not verified with, naming the version or the missing symbols."""
    import vllm

    version = vllm.__version__
    if not version.startswith(SUPPORTED_VERSIONS):
        raise IncompatibleVllmError(f"--plugin vtprune supports vLLM {', '.join(v + 'x' for v in SUPPORTED_VERSIONS)}; "
                                    f"found {version}")
    missing = missing_symbols()
    if missing:
        raise IncompatibleVllmError(f"--plugin vtprune: vLLM {version} lacks what the plugin needs: "
                                    + "; ".join(missing))
