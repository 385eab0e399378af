"""Every piece of vLLM the vision layer copies rather than calls, each next to the upstream function it follows.

The plugin needs variations of vLLM's vision-tower computation that vLLM offers no hook for: a block's
intermediates (keys, values, branch outputs) for STC-Cacher, attention metadata for sequences that are not whole
H*W slices for the subset tower. Each copy below follows its upstream function step for step, with the same
submodules and op order, so its results are bit-identical to the stock computation (tested). Everything else is
called, not copied.

``MIRRORED`` names each upstream function copied here, ``RELIED_ON`` each one called whose behaviour the vision
layer depends on (and why), with the sha256 of its source (``inspect.getsource``) in vLLM ``VLLM_VERSION``.
``tests/vision/test_vision_vllm_mirror.py`` fails when any of them changes: re-read the upstream function, update
the copy (or re-check the property), then the digest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

VLLM_VERSION = "0.32.0"

_QWEN3_VL = "vllm.model_executor.models.qwen3_vl"
_TOWER = f"{_QWEN3_VL}:Qwen3_VisionTransformer"

MIRRORED: dict[str, str] = {
    # block_forward
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VisionAttention.forward":
        "d65da66fac09eae5db93eedae4d304c9b546723a8b7285f7c3fba7573bb49c6b",
    f"{_QWEN3_VL}:Qwen3_VisionBlock.forward": "e92ce5aad55b0340042055ea57edacf749579529f2145e439cd18ba031ea1e64",
    # embed_patches, run_layers
    f"{_TOWER}.forward": "6ef9bf87825621c11ab3f4871fb5cdadd7cc1e5b8e05737df63284ffc8c8fcaf",
    # slice_attention_metadata
    f"{_TOWER}.prepare_encoder_metadata": "4a0326be552bd96d13bba0ba4072d6a29c0116802837699cbd23b95b52357fb7",
    # apply_rotary (CPU)
    "vllm.model_executor.layers.rotary_embedding.common:ApplyRotaryEmb.forward_static":
        "fd1cbafea2194e1df6c01a61353a2db8ee18c1433b4ba9b515e2c4822eb85c61",
    "vllm.model_executor.layers.rotary_embedding.common:ApplyRotaryEmb.forward_cpu":
        "09ee844a1385e9ad40cdca30ae2f00291af75623d40d6620561b0e1166767fc2",
    # process_weights_after_loading
    "vllm.model_executor.model_loader.utils:process_weights_after_loading":
        "815c0f6b5a55ffa409afe9125acda9e3159074bc23241ccb98fe0590f145ea93",
}

RELIED_ON: dict[str, str] = {
    # Position-embedding and rotary tables of a (t, h, w) grid repeat one slice's table: they depend on (h, w)
    # only. The slice cache (a slice's output is a function of its pixels and (H, W)) and the subset and
    # selective towers (one slice's table gathered for every slice) rest on it.
    f"{_TOWER}.fast_pos_embed_interpolate": "424f054075b79ed4116ee9c8da0c922b1bbd806a3b10714c987e7c3ee89bfb9a",
    f"{_TOWER}.rot_pos_emb": "2f36e214fe87e122cf66d88afea365b572bd774fa1e5d83cd706662c7bf0bc7a",
    # On CPU the linear layers' weights are packed into ``layer.cpu_linear`` and the plain weight removed; the
    # selective tower recovers the split q/k/v weights through that kernel and packs them the same way.
    "vllm.model_executor.layers.linear:UnquantizedLinearMethod.process_weights_after_loading":
        "57e9db55858f6e18277626c54ea89765d2595770cb53083fd3ad9de53634dff5",
    "vllm.model_executor.layers.utils:dispatch_cpu_unquantized_gemm":
        "2ba18ce6108799daff304b5976257462ab1b2273f185bafa5285ea876590d152",
    "vllm.model_executor.layers.utils:cpu_unquantized_gemm":
        "f399bc57bd3ce882d114e3067546ef9d08a7a49c54c1ec3db9e13a04dff673f5",
}


def block_forward(blk: torch.nn.Module, x: torch.Tensor, meta: dict[str, Any]):
    """``Qwen3_VisionBlock.forward`` on ``x`` ``[S, 1, C]`` with its attention's
    ``Qwen2_5_VisionAttention.forward`` inlined (the rotary branch: Qwen3-VL always has rotary tables), also
    returning the layer's own intermediates: ``(x_out, K, V, A, M)`` with ``K`` the rotated keys and ``V`` the
    values ``[1, S, heads, head_dim]`` (views into the layer's buffers), ``A`` the attention branch after the out
    projection and ``M`` the MLP branch ``[S, 1, C]``. ``meta``: ``prepare_encoder_metadata``'s dict.
    """
    import einops

    attn = blk.attn
    heads = attn.num_attention_heads_per_partition
    y, _ = attn.qkv(blk.norm1(x))
    seq_len, batch_size, _ = y.shape
    qkv = einops.rearrange(y, "s b (three head head_dim) -> b s three head head_dim", three=3, head=heads)
    qk, v = qkv[:, :, :2], qkv[:, :, 2]
    del qkv
    qk = einops.rearrange(qk, "b s two head head_dim -> (two b) s head head_dim", two=2).contiguous()
    qk = attn.apply_rotary_emb(qk, meta["rotary_pos_emb_cos"], meta["rotary_pos_emb_sin"])
    q, k = qk.view(2, batch_size, seq_len, heads, attn.hidden_size_per_attention_head).unbind(dim=0)
    ctx = attn.attn(
        query=q,
        key=k,
        value=v,
        cu_seqlens=meta["cu_seqlens"],
        max_seqlen=meta["max_seqlen"],
        sequence_lengths=meta.get("sequence_lengths"),
    )
    del q
    ctx = einops.rearrange(ctx, "b s h d -> s b (h d)", b=batch_size).contiguous()
    a, _ = attn.proj(ctx)
    # Drop what the stock forward has dropped by now: CPU allocators hand the MLP recycled (warm) memory only
    # when the attention temporaries are gone (measured: ~20% slower block otherwise).
    del ctx
    x = x + a
    m = blk.mlp(blk.norm2(x))
    x = x + m
    return x, k, v, a, m


def embed_patches(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The first steps of ``Qwen3_VisionTransformer.forward``: input norm and patch embedding, ``[rows, C]``."""
    hidden = visual.input_norm(pixels.to(device=visual.device, non_blocking=True), visual.dtype)
    return visual.patch_embed(hidden)


def run_layers(
    visual: torch.nn.Module,
    run_block: Callable[[int, torch.nn.Module], None],
    merger_input: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """The layer loop and mergers of ``Qwen3_VisionTransformer.forward``: ``run_block(layer_num, blk)`` advances
    the caller's hidden states by one block; after each DeepStack layer and after the last block the mergers read
    ``merger_input()`` (``[rows, 1, C]``, in output order). Returns ``[rows / m^2, out_hidden * (1 + deepstack)]``.
    """
    deepstack: list[torch.Tensor] = []
    for layer_num, blk in enumerate(visual.blocks):
        run_block(layer_num, blk)
        if layer_num in visual.deepstack_visual_indexes:
            merger = visual.deepstack_merger_list[visual.deepstack_visual_indexes.index(layer_num)]
            deepstack.append(merger(merger_input()))
    return torch.cat([visual.merger(merger_input())] + deepstack, dim=1)


def slice_attention_metadata(visual: torch.nn.Module, seq_lens: Sequence[int]) -> dict[str, torch.Tensor | None]:
    """``cu_seqlens``, ``max_seqlen`` and ``sequence_lengths`` for attention sequences of ``seq_lens`` patches.

    The attention part of ``Qwen3_VisionTransformer.prepare_encoder_metadata`` (without its CUDA-graph padding),
    calling the same ``MMEncoderAttention`` helpers; upstream derives the lengths from a grid (H*W per slice),
    here they are given (a slice's kept patches).
    """
    from vllm.model_executor.layers.attention.mm_encoder_attention import MMEncoderAttention

    cu_seqlens = np.concatenate([np.zeros(1, dtype=np.int32), np.cumsum(seq_lens, dtype=np.int32)])
    backend, device = visual.attn_backend, visual.device
    return {
        "sequence_lengths": MMEncoderAttention.maybe_compute_seq_lens(backend, cu_seqlens, device),
        "max_seqlen": torch.tensor(MMEncoderAttention.compute_max_seqlen(backend, cu_seqlens), dtype=torch.int32),
        "cu_seqlens": MMEncoderAttention.maybe_recompute_cu_seqlens(
            backend,
            cu_seqlens,
            visual.hidden_size,
            visual.tp_size,
            device,
            fp8_padded_hidden_size=visual.fp8_padded_hidden_size,
        ),
    }


def apply_rotary(attn: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The attention's rotary op on ``x`` ``[..., S, heads, head_dim]`` with ``cos``/``sin`` ``[S, head_dim / 2]``.

    Off CPU, or for another rotary style: vLLM's own op (a fused kernel on CUDA). On CPU vLLM runs
    ``ApplyRotaryEmb.forward_static`` (``forward_cpu`` -> ``forward_native``); its neox-style arithmetic is
    written here into one output buffer (no chunk/cat temporaries; ~2x faster): ``o1 = x1 c - x2 s``,
    ``o2 = x2 c + x1 s``.
    """
    op = attn.apply_rotary_emb
    if x.device.type != "cpu" or getattr(op, "is_neox_style", True) is not True or getattr(
        op, "enable_fp32_compute", False
    ):
        return op(x, cos, sin)
    d = x.shape[-1] // 2
    c = cos.unsqueeze(-2).to(x.dtype)
    s = sin.unsqueeze(-2).to(x.dtype)
    x1, x2 = x[..., :d], x[..., d:]
    out = torch.empty_like(x)
    o1, o2 = out[..., :d], out[..., d:]
    torch.mul(x1, c, out=o1).addcmul_(x2, s, value=-1)
    torch.mul(x2, c, out=o2).addcmul_(x1, s)
    return out


def process_weights_after_loading(module: torch.nn.Module) -> None:
    """The per-layer step of vLLM's loader (``model_loader.utils.process_weights_after_loading``, whose model-level
    function needs a full ``ModelConfig``) for a module on its target device: every quant method processes its
    layer's weights. On CPU this packs the GEMM weights and removes the plain ones, as in a served model."""
    from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase

    for layer in module.modules():
        quant_method = getattr(layer, "quant_method", None)
        if isinstance(quant_method, QuantizeMethodBase):
            quant_method.process_weights_after_loading(layer)
