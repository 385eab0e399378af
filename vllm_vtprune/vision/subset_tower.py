"""vLLM's Qwen3-VL vision tower run on the kept merge groups only (pre-tower pruning, issue #13).

What the stock ``Qwen3_VisionTransformer.forward`` (vLLM 0.32.0) computes for one video is, per temporal slice,
attention over that slice's patches only (``cu_seqlens``) with position embeddings and a 2-D rotary table that
depend on (h, w) alone; every other op (input norm, patch embedding, LayerNorms, MLPs, the merger and DeepStack
mergers over each ``m*m`` consecutive rows) is row-wise. So running the tower on the kept groups of each slice is
the stock forward with:

- the kept groups' patch rows as input (``m*m`` rows each, in the processor's order);
- ``pos_embeds`` and the rotary ``cos``/``sin`` gathered at those patches from vLLM's own tables
  (``fast_pos_embed_interpolate`` and ``rot_pos_emb`` for one slice of the video's (Hp, Wp); they do not depend
  on t, so one slice's table serves every slice);
- one attention sequence per slice over its kept patches: ``cu_seqlens`` from the per-slice kept counts times
  ``m*m`` (slices with nothing kept are left out).

That is the stock forward's own code path (``forward(x, grid_thw, encoder_metadata=...)``); only the attention
part of the metadata is built here, mirroring ``prepare_encoder_metadata`` (see ``slice_attention_metadata``).
Each kept token's output (main merger and DeepStack levels, concatenated as the stock tower returns them) is the
stock computation restricted to the kept groups of its slice, at their original positions. With every group kept
the call equals the stock tower call bit for bit (``tests/vision/test_vision_subset_tower.py``).

Repeated slices: a slice whose kept groups and pixels repeat an earlier slice of the same video exactly
(``PreTowerSelection.slice_source``) has the same output, so it is computed once and its rows copied; the API
server does not even ship its pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def slice_attention_metadata(visual: torch.nn.Module, seq_lens: Sequence[int]) -> dict[str, torch.Tensor | None]:
    """``cu_seqlens``, ``max_seqlen`` and ``sequence_lengths`` for attention sequences of ``seq_lens`` patches.

    Mirrors the attention part of vLLM 0.32.0's ``Qwen3_VisionTransformer.prepare_encoder_metadata`` (without its
    CUDA-graph padding), calling the same ``MMEncoderAttention`` helpers; ``prepare_encoder_metadata`` derives
    the lengths from a grid (H*W per slice), here they are the kept counts. Tripwire:
    ``test_attention_metadata_matches_prepare_encoder_metadata``.
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


def _slice_starts(counts: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(counts, 0) - counts


def run_subset_tower(
    visual: torch.nn.Module,
    pixel_rows: torch.Tensor,
    video_grid_thw: Sequence[Sequence[int]] | torch.Tensor,
    kept: Sequence[torch.Tensor],
    slice_source: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Tower outputs ``[sum_i K_i, out_hidden * (1 + deepstack)]`` of the kept groups of a batch of videos.

    pixel_rows: the patch rows of the groups to compute, video after video, ascending within a video (what
        ``PreTowerSelection.pixel_rows()`` picks from each video's ``pixel_values_videos``): ``m*m`` rows per kept
        group of every slice whose ``slice_source`` is -1. uint8 or float, as the stock tower takes them.
    video_grid_thw: per video (T, Hp, Wp) in patches (the original grid).
    kept: per video, int64 [K_i] ascending kept group indices ``t*H*W + g`` on the post-merger grid.
    slice_source: per video, int64 [T] (-1: computed; s: a copy of slice s), or None for no repeated slices.
    Returns one row per kept group, in ``kept`` order, video after video (the stock tower's row layout).
    """
    grids = video_grid_thw.tolist() if isinstance(video_grid_thw, torch.Tensor) else [list(g) for g in video_grid_thw]
    if len(kept) != len(grids):
        raise ValueError(f"got {len(grids)} grids but {len(kept)} kept-group tensors")
    sources = list(slice_source) if slice_source is not None else [None] * len(grids)
    unit = visual.spatial_merge_size**2
    device = visual.device
    one_slice = [[1, hp, wp] for _, hp, wp in grids]
    pos_table = visual.fast_pos_embed_interpolate(one_slice)
    cos_table, sin_table = visual.rot_pos_emb(one_slice)

    table_rows, seq_lens, out_rows = [], [], []
    table_offset = computed_offset = 0
    any_copy = False
    for (t, hp, wp), groups, source in zip(grids, kept, sources):
        g_per_slice = hp * wp // unit
        groups = groups.to(device=device, dtype=torch.long)
        slice_of = groups // g_per_slice
        if source is None:
            source = torch.full((t,), -1, dtype=torch.long, device=device)
        source = source.to(device=device, dtype=torch.long)
        computed = source[slice_of] < 0
        own = groups[computed]
        table_rows.append(table_offset + ((own % g_per_slice)[:, None] * unit + torch.arange(unit, device=device)))
        counts = torch.bincount(slice_of[computed], minlength=t)  # computed groups per slice (0 for copies)
        seq_lens.extend((counts[counts > 0] * unit).tolist())
        # row of each kept group in the tower output: its own slice's, or the source slice's at the same rank
        per_slice = torch.bincount(slice_of, minlength=t)
        rank = torch.arange(groups.numel(), device=device) - _slice_starts(per_slice)[slice_of]
        from_slice = torch.where(source[slice_of] < 0, slice_of, source[slice_of])
        out_rows.append(computed_offset + _slice_starts(counts)[from_slice] + rank)
        any_copy |= bool((~computed).any())
        table_offset += hp * wp
        computed_offset += own.numel()

    rows = torch.cat(table_rows).reshape(-1)
    if pixel_rows.shape[0] != rows.numel():
        raise ValueError(f"pixel_rows has {pixel_rows.shape[0]} rows; the kept groups to compute need {rows.numel()}")
    metadata = {
        "pos_embeds": pos_table.index_select(0, rows),
        "rotary_pos_emb_cos": cos_table.index_select(0, rows),
        "rotary_pos_emb_sin": sin_table.index_select(0, rows),
        **slice_attention_metadata(visual, seq_lens),
    }
    out = visual(pixel_rows, grids, encoder_metadata=metadata)
    return out.index_select(0, torch.cat(out_rows)) if any_copy else out
