"""STC-Cacher forward through vLLM's ``Qwen3_VisionTransformer`` (selective recomputation per layer).

Port of STC's ViT feature caching with selective recomputation (arXiv 2512.00891; released code
``model/custom_siglip.py::forward_with_selective_key_recompute``) to Qwen3-VL's tower: fused qkv, 2-D rotary,
DeepStack taps. One call runs a set of *full* slices (references, plus any slice computed exactly) and groups of
*selective* slices (``plan.selective_layout``), all in the same layer loop. At every block:

1. Full slices: the stock block computation (``vllm_mirror.block_forward``: vLLM's own submodules in the stock
   order, attention per slice via ``cu_seqlens``), keeping the rotated keys ``K``, values ``V``,
   attention-branch output ``A`` (after the out projection) and MLP-branch output ``M`` of the reference slices
   for step 2. These are the layer's own intermediates (no extra compute); they live until the layer's selective
   step is done.
2. Each selective group (slices of one ``(H, W)`` and ratio, batched as ``[G, N, C]``):
   ``u = LN1(h)`` for all tokens; ``K = W_k u + b_k`` for all tokens only (the fused ``qkv`` weight is split, so
   Q and V are not computed for unselected tokens), rotated; per slice the ``k = max(1, floor(r N))`` tokens
   with the lowest cosine to the reference's key at the same position (all heads concatenated) are selected
   (``core.stc_cacher.lowest_k``, ties to the lower index); ``Q_I, V_I`` for those; attention of the
   selected queries over all fresh keys and the mixed values ``V_ref`` with rows ``I`` replaced;
   ``h += A_ref`` with rows ``I`` replaced by the fresh attention output; ``h += M_ref`` with rows ``I``
   replaced by ``MLP(LN2(h_I))``. The reference is not updated.

DeepStack taps and the final merger read the selectively updated hidden states, as in STC.

Rotary embeddings: the cosine at the same token position is invariant to the (orthogonal, same-position) 2-D
rotation, so comparing rotated keys equals comparing raw keys; rotated keys are needed for attention anyway.

Where the ``qkv`` weight cannot be split (a quantized tower), ``K`` comes from the fused projection over all
tokens (same selection and result, smaller saving). On CPU, vLLM packs the GEMM weights and drops the plain ones
after loading; the split weights are then recovered once per layer from the packed kernel applied to an identity
matrix without bias (exact: each output is ``1.0 * w``) and memoised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from vllm_vtprune.core.similarity import COSINE_EPS
from vllm_vtprune.core.stc_cacher import (
    cosine_from_terms,
    flat_row_index,
    key_similarity_terms,
    lowest_k,
    num_recomputed,
)

from .plan import SelectiveGroup, grid_runs
from .vllm_mirror import apply_rotary, block_forward, embed_patches, run_layers


@dataclass
class _QKVSplit:
    """Separate Q / K / V projections of one block's fused ``qkv`` (per tensor-parallel rank)."""

    wq: torch.Tensor | None = None
    wk: torch.Tensor | None = None
    wv: torch.Tensor | None = None
    bq: torch.Tensor | None = None
    bk: torch.Tensor | None = None
    bv: torch.Tensor | None = None
    fused: Any = None  # the qkv layer itself, when the weight cannot be split
    width: int = 0  # per-rank heads * head_dim
    kernels: tuple | None = None  # CPU: vLLM-dispatched GEMMs for (q, k, v)

    def k(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Keys for all tokens, plus the fused output when the fallback computed it (so Q/V can be sliced)."""
        if self.fused is not None:
            out, _ = self.fused(u)
            return out[..., self.width : 2 * self.width], out
        if self.kernels is not None:
            return self.kernels[1](u), None
        return F.linear(u, self.wk, self.bk), None

    def qv(self, u_sel: torch.Tensor, fused_rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fused is not None:
            assert fused_rows is not None
            return fused_rows[..., : self.width], fused_rows[..., 2 * self.width :]
        if self.kernels is not None:
            return self.kernels[0](u_sel), self.kernels[2](u_sel)
        return F.linear(u_sel, self.wq, self.bq), F.linear(u_sel, self.wv, self.bv)


@dataclass
class SplitMemo:
    """Per-tower memo of recovered (CPU-packed) split weights, by block index; an entry holds the layer's packed
    kernel it was recovered from and is recomputed when the layer's kernel changes (weights reloaded)."""

    entries: dict[int, tuple[Any, _QKVSplit]] = field(default_factory=dict)


def _cpu_kernel(weight: torch.Tensor, bias: torch.Tensor | None):
    """vLLM's own CPU GEMM dispatch (oneDNN / sgl / torch) for a plain weight, as its linear layers use."""
    from vllm.model_executor.layers.utils import cpu_unquantized_gemm, dispatch_cpu_unquantized_gemm

    holder = torch.nn.Module()
    holder.weight = torch.nn.Parameter(weight, requires_grad=False)
    dispatch_cpu_unquantized_gemm(holder, remove_weight=False)
    return lambda x: cpu_unquantized_gemm(holder, x, holder.weight, bias)


def _qkv_split(layer: torch.nn.Module, width: int, memo: SplitMemo, block: int) -> _QKVSplit:
    """Separate Q / K / V projections of block ``block``'s fused ``qkv`` ``layer``."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.utils import cpu_unquantized_gemm

    bias = getattr(layer, "bias", None)
    b = (bias[:width], bias[width : 2 * width], bias[2 * width :]) if bias is not None else (None, None, None)
    if not isinstance(getattr(layer, "quant_method", None), UnquantizedLinearMethod):
        return _QKVSplit(fused=layer, width=width)
    weight = layer.weight
    if weight.device.type != "cpu" and weight.dim() == 2 and weight.shape[0] == 3 * width:  # views, no copy
        return _QKVSplit(weight[:width], weight[width : 2 * width], weight[2 * width :], *b, width=width)
    # CPU: vLLM packed the weight into a kernel and (usually) dropped the plain one after loading.
    kernel = getattr(layer, "cpu_linear", None)
    cached = memo.entries.get(block)
    if cached is not None and cached[0] is kernel:
        return cached[1]
    if weight.dim() == 2 and weight.shape[0] == 3 * width:
        w = weight.detach()
    elif kernel is not None:
        in_features = getattr(layer, "input_size_per_partition", None) or layer.input_size
        dtype = bias.dtype if bias is not None else torch.get_default_dtype()
        with torch.no_grad():  # [in, 3 * width] == W^T exactly
            w_t = cpu_unquantized_gemm(layer, torch.eye(in_features, dtype=dtype), weight, None)
        if tuple(w_t.shape) != (in_features, 3 * width):
            return _QKVSplit(fused=layer, width=width)
        w = w_t.t()
    else:
        return _QKVSplit(fused=layer, width=width)
    wq, wk, wv = (w[i * width : (i + 1) * width].contiguous() for i in range(3))
    split = _QKVSplit(wq, wk, wv, *b, width=width)
    try:
        split.kernels = (_cpu_kernel(wq, b[0]), _cpu_kernel(wk, b[1]), _cpu_kernel(wv, b[2]))
    except Exception:  # noqa: BLE001 - any dispatch failure: plain torch GEMMs are correct too
        split.kernels = None
    memo.entries[block] = (kernel, split)
    return split


class _RefRows:
    """The reference rows of a group inside the full part: a contiguous range (views) or a gather index."""

    def __init__(self, starts: list[int], n: int, device: torch.device) -> None:
        self.n = n
        self.g = len(starts)
        contiguous = all(s == starts[0] + i * n for i, s in enumerate(starts))
        self.start = starts[0] if contiguous else None
        self.index = (
            None
            if contiguous
            else (
                torch.tensor(starts, dtype=torch.int64, device=device)[:, None]
                + torch.arange(n, dtype=torch.int64, device=device)
            ).reshape(-1)
        )

    def take(self, rows2d: torch.Tensor) -> torch.Tensor:
        """``[G, N, width]`` rows of ``rows2d`` ``[S_full, width]`` (a view when contiguous and possible)."""
        if self.start is not None:
            return rows2d[self.start : self.start + self.g * self.n].view(self.g, self.n, -1)
        return rows2d.index_select(0, self.index).view(self.g, self.n, -1)


def _selective_block(
    blk: torch.nn.Module,
    h: torch.Tensor,  # [G, N, C], updated in place
    group: SelectiveGroup,
    refs: _RefRows,
    full: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    rope: tuple[torch.Tensor, torch.Tensor],
    split: _QKVSplit,
    tp_size: int,
) -> torch.Tensor:
    attn = blk.attn
    heads = attn.num_attention_heads_per_partition
    hd = attn.hidden_size_per_attention_head
    g, n, c = h.shape
    width = heads * hd
    k_full, v_full, a_full, m_full = full
    cos, sin = rope  # [N, rot/2]: same positions in every slice of the group

    u = blk.norm1(h)
    k, fused_out = split.k(u)
    k = apply_rotary(attn, k.reshape(g, n, heads, hd), cos, sin)  # [G, N, heads, hd]
    k_ref = refs.take(k_full)  # [G, N, width]
    if tp_size > 1:  # each rank holds some heads: reduce the partial sums so all ranks select alike
        from vllm.distributed import tensor_model_parallel_all_reduce

        terms = tensor_model_parallel_all_reduce(
            key_similarity_terms(k.view(g, n, width), k_ref).contiguous()
        )
        sim = cosine_from_terms(terms)
    else:
        sim = F.cosine_similarity(k.view(g, n, width).float(), k_ref.float(), dim=-1, eps=COSINE_EPS)
    idx = lowest_k(sim, num_recomputed(n, group.ratio))  # [G, kc], ascending
    kc = idx.shape[1]
    flat = flat_row_index(idx, n)

    u_sel = u.reshape(g * n, c).index_select(0, flat)
    fused_sel = fused_out.reshape(g * n, -1).index_select(0, flat) if fused_out is not None else None
    del u, fused_out, k_ref, sim  # free early: the allocator then recycles warm memory (see vllm_mirror.block_forward)
    q_sel, v_sel = split.qv(u_sel, fused_sel)
    q_sel = apply_rotary(
        attn,
        q_sel.reshape(1, g * kc, heads, hd),
        cos.index_select(0, idx.reshape(-1)),
        sin.index_select(0, idx.reshape(-1)),
    )

    v_mix = refs.take(v_full).reshape(g * n, width)
    if refs.start is not None:
        v_mix = v_mix.clone()  # a view of the reference's values: never write into it
    v_mix.index_copy_(0, flat, v_sel.reshape(g * kc, width).to(v_mix.dtype))

    ctx = F.scaled_dot_product_attention(
        q_sel.view(g, kc, heads, hd).transpose(1, 2),
        k.transpose(1, 2),
        v_mix.view(g, n, heads, hd).transpose(1, 2),
        scale=attn.attn.scale,
    )  # [G, heads, kc, hd]
    del q_sel, v_sel, v_mix, k
    a_sel, _ = attn.proj(ctx.transpose(1, 2).reshape(g, kc, width))
    del ctx

    # h += A with A = A_ref, rows I replaced by a_sel  (row-wise the same additions as materialising A)
    h2 = h.view(g * n, c)
    h_sel = h2.index_select(0, flat)
    h.add_(refs.take(a_full).view(g, n, c))
    h_sel = h_sel + a_sel.reshape(g * kc, c)
    h2.index_copy_(0, flat, h_sel)
    # h += M with M = M_ref, rows I replaced by MLP(LN2(h_I))
    m_sel = blk.mlp(blk.norm2(h_sel))
    h.add_(refs.take(m_full).view(g, n, c))
    h2.index_copy_(0, flat, h_sel + m_sel)
    return h


def _row_index(starts: list[int], sizes: list[int], device: torch.device) -> torch.Tensor:
    """All rows of the ranges ``[starts[i], starts[i] + sizes[i])``, concatenated (int64)."""
    if not starts:
        return torch.empty(0, dtype=torch.int64, device=device)
    st = torch.tensor(starts, dtype=torch.int64)
    sz = torch.tensor(sizes, dtype=torch.int64)
    begin = torch.cumsum(sz, 0) - sz  # where each range starts in the output
    rows = torch.arange(int(sz.sum()), dtype=torch.int64) + torch.repeat_interleave(st - begin, sz)
    return rows.to(device)


class _Hidden:
    """The selective tower's hidden states: the full part ``[S_full, 1, C]`` and one ``[G, N, C]`` block per
    group, laid out as [full slices | group 0 | group 1 ...]; ``src_rows[j]`` is the output-order row of layout
    row ``j``."""

    def __init__(self, hidden: torch.Tensor, n_full: int, groups: list[SelectiveGroup], src_rows: torch.Tensor):
        self.src_rows = src_rows
        self.full = hidden[:n_full].unsqueeze(1)
        self.groups, at = [], n_full
        for grp in groups:
            size = grp.num_slices * grp.num_tokens
            self.groups.append(hidden[at : at + size].view(grp.num_slices, grp.num_tokens, -1))  # disjoint views
            at += size

    def output_order(self) -> torch.Tensor:
        """All rows in output order, ``[rows, 1, C]`` (what the mergers read)."""
        total, c = self.src_rows.numel(), self.full.shape[-1]
        buf = torch.empty(total, 1, c, dtype=self.full.dtype, device=self.full.device)
        flat = buf.view(total, c)
        at = self.full.shape[0]
        if at:
            flat.index_copy_(0, self.src_rows[:at], self.full.reshape(at, c))
        for hg in self.groups:
            flat.index_copy_(0, self.src_rows[at : at + hg.shape[0] * hg.shape[1]], hg.reshape(-1, c))
            at += hg.shape[0] * hg.shape[1]
        return buf


def run_selective_tower(
    visual: torch.nn.Module,
    pixels: torch.Tensor,
    full_hw: list[tuple[int, int]],
    full_dest: list[int],
    groups: list[SelectiveGroup],
    group_dest: list[list[int]],
    memo: SplitMemo,
) -> torch.Tensor:
    """Run the tower on full slices and selective groups in one layer loop; one merger pass at the end.

    ``pixels``: the patch rows of every slice to compute, in output order. Full slice ``j`` has grid
    ``full_hw[j]`` and starts at row ``full_dest[j]`` of ``pixels``; member ``m`` of group ``i`` starts at
    ``group_dest[i][m]``. Group members reference full slices by index (``SelectiveGroup.ref_slots``).
    Returns the merger outputs ``[rows / 4, out_hidden * (1 + deepstack)]`` in output (``pixels``) order.
    Internally the rows are laid out as [full slices | group 0 | group 1 ...] (a 'hidden'-wide gather after the
    patch embedding) and put back in output order before each merger.
    """
    device = visual.device
    sizes_full = [h * w for h, w in full_hw]
    n_full = sum(sizes_full)
    starts_full, acc = [], 0  # first row of each full slice inside the full part
    for size in sizes_full:
        starts_full.append(acc)
        acc += size
    parts = [_row_index(full_dest, sizes_full, device)]
    for grp, dest in zip(groups, group_dest):
        parts.append(_row_index(dest, [grp.num_tokens] * len(dest), device))
    src_rows = torch.cat(parts)
    if src_rows.numel() != pixels.shape[0]:
        raise ValueError(f"pixels has {pixels.shape[0]} rows, the plan covers {src_rows.numel()}")

    hidden = embed_patches(visual, pixels).index_select(0, src_rows)  # layout order
    meta = visual.prepare_encoder_metadata(grid_runs(full_hw)) if n_full else None
    pos = [meta["pos_embeds"]] if meta is not None else []
    ropes, ref_rows = [], []
    for grp in groups:
        pos.append(visual.fast_pos_embed_interpolate([[grp.num_slices, grp.height, grp.width]]))
        ropes.append(visual.rot_pos_emb([[1, grp.height, grp.width]]))
        ref_rows.append(_RefRows([starts_full[s] for s in grp.ref_slots], grp.num_tokens, device))
    h = _Hidden(hidden + torch.cat(pos, dim=0), n_full, groups, src_rows)

    attn = visual.blocks[0].attn
    width = attn.num_attention_heads_per_partition * attn.hidden_size_per_attention_head

    def run_block(layer_num: int, blk: torch.nn.Module) -> None:
        full_parts = None
        if n_full:
            h.full, k, v, a, m = block_forward(blk, h.full, meta)
            full_parts = (k.reshape(n_full, width), v.reshape(n_full, width), a.reshape(n_full, -1),
                          m.reshape(n_full, -1))
        if groups:
            split = _qkv_split(blk.attn.qkv, width, memo, layer_num)
            for i, grp in enumerate(groups):
                h.groups[i] = _selective_block(
                    blk, h.groups[i], grp, ref_rows[i], full_parts, ropes[i], split, visual.tp_size
                )

    return run_layers(visual, run_block, h.output_order)
