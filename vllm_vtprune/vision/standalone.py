"""Build vLLM's Qwen3-VL vision tower on its own (no engine), for tests and benchmarks.

vLLM's ``Qwen3_VisionTransformer`` needs a current ``VllmConfig`` and an initialised (single-rank) model
parallel group at construction, and on CPU ``process_weights_after_loading`` to set up its GEMM kernels
(which also *removes* the linear weights: they live only in packed form afterwards, exactly as in a served
model). :func:`build_vision_tower` does all of it, so tests exercise the same module state as serving.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

_OWNS_PARALLEL_STATE = False


def _ensure_single_rank_parallel_state() -> None:
    global _OWNS_PARALLEL_STATE
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.distributed.parallel_state import model_parallel_is_initialized

    if model_parallel_is_initialized():
        return
    _OWNS_PARALLEL_STATE = True
    init_file = Path(tempfile.mkdtemp(prefix="vtprune_dist_")) / "init"
    init_distributed_environment(
        world_size=1, rank=0, distributed_init_method=f"file://{init_file}", local_rank=0, backend="gloo"
    )
    initialize_model_parallel(1, 1)


def release_parallel_state() -> None:
    """Tear down the single-rank process group :func:`build_vision_tower` created (no-op otherwise)."""
    global _OWNS_PARALLEL_STATE
    if not _OWNS_PARALLEL_STATE:
        return
    from vllm.distributed import destroy_distributed_environment, destroy_model_parallel

    destroy_model_parallel()
    destroy_distributed_environment()
    _OWNS_PARALLEL_STATE = False


def _hf_init_weights(vision_config: Any, seed: int) -> dict[str, torch.Tensor]:
    """HF's own random init of the vision model (seeded): realistic, non-degenerate features."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLVisionModel._from_config(vision_config)
    return {k: v.detach() for k, v in model.state_dict().items()}


def _checkpoint_weights(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for path in sorted(Path(checkpoint).glob("*.safetensors")):
        for name, tensor in load_file(str(path)).items():
            for prefix in ("model.visual.", "visual."):
                if name.startswith(prefix):
                    weights[name[len(prefix) :]] = tensor
    if not weights:
        raise FileNotFoundError(f"no vision-tower weights in {checkpoint}")
    return weights


def build_vision_tower(
    hf_config: Any,
    *,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """vLLM's ``Qwen3_VisionTransformer`` for ``hf_config`` (a ``Qwen3VLConfig``), weights loaded and processed.

    Weights come from ``checkpoint`` (a Qwen3-VL checkpoint directory) when given, else from HF's seeded
    random init. Returned in eval mode, on ``device``, in ``dtype``.
    """
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.models.qwen3_vl import Qwen3_VisionTransformer

    from .vllm_mirror import process_weights_after_loading

    vision_config = hf_config.vision_config
    weights = (
        _checkpoint_weights(checkpoint) if checkpoint is not None else _hf_init_weights(vision_config, seed)
    )
    vllm_config = VllmConfig()
    old_dtype = torch.get_default_dtype()
    with set_current_vllm_config(vllm_config):
        _ensure_single_rank_parallel_state()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                tower = Qwen3_VisionTransformer(
                    vision_config,
                    norm_eps=getattr(hf_config.text_config, "rms_norm_eps", 1e-6),
                    prefix="visual",
                )
        finally:
            torch.set_default_dtype(old_dtype)
        tower.load_weights((k, v.to(dtype)) for k, v in weights.items())
        tower.to(device=device, dtype=dtype)
        process_weights_after_loading(tower)
    return tower.eval()
