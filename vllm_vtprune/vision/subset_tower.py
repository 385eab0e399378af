"""vLLM's Qwen3-VL vision tower run on the kept merge groups only (pre-tower pruning).

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

That is the stock forward's own code path (``forward(x, grid_thw, encoder_metadata=...)``); which patches and
sequences is planned by ``plan.plan_subset``, and only the attention part of the metadata is built here
(``vllm_mirror.slice_attention_metadata``). Each kept token's output (main merger and DeepStack levels,
concatenated as the stock tower returns them) is the stock computation restricted to the kept groups of its slice,
at their original positions. With every group kept the call equals the stock tower call bit for bit
(``tests/vision/test_vision_subset_tower.py``).

Repeated slices: a slice whose kept groups and pixels repeat an earlier slice of the same video exactly
(``PreTowerSelection.slice_source``) has the same output, so it is computed once and its rows copied; the API
server does not even ship its pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .plan import plan_subset
from .vllm_mirror import slice_attention_metadata


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
    plan = plan_subset(grids, kept, sources, visual.spatial_merge_size**2, visual.device)
    rows = plan.table_rows
    if pixel_rows.shape[0] != rows.numel():
        raise ValueError(f"pixel_rows has {pixel_rows.shape[0]} rows; the kept groups to compute need {rows.numel()}")
    one_slice = [[1, hp, wp] for _, hp, wp in grids]
    cos_table, sin_table = visual.rot_pos_emb(one_slice)
    metadata = {
        "pos_embeds": visual.fast_pos_embed_interpolate(one_slice).index_select(0, rows),
        "rotary_pos_emb_cos": cos_table.index_select(0, rows),
        "rotary_pos_emb_sin": sin_table.index_select(0, rows),
        **slice_attention_metadata(visual, plan.seq_lens),
    }
    out = visual(pixel_rows, grids, encoder_metadata=metadata)
    return out if plan.out_rows is None else out.index_select(0, plan.out_rows)
