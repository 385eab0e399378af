"""M-RoPE positions of pruned videos, kept in vLLM's own per-request position state.

Every kept token sits exactly where it sat unpruned, and everything after a video sits where it would without
pruning. The work is split in two, both through hooks vLLM calls itself:

- **at request start** (``get_mrope_input_positions``), :func:`request_positions` gives every token outside a
  dynamic middle (see ``layout``) its unpruned position, every middle row the position of the middle's first
  row, and the unpruned decode offset. All of it depends on the grid alone, so prefix caching stays exact.
- **after the tower**, the model appends to each middle row (``mrope.encode_rows``) its unpruned offset
  ``(t, h, w)`` from the middle's first row and its index in the middle; vLLM's multimodal-pruning hook
  (``recompute_mrope_positions``, called by both model runners before the embeddings are merged) hands those
  rows back per request with the request's positions, and :func:`recompute_positions` writes each row's
  final position into them. The runners keep those positions and copy them into the persistent buffers the
  language model (and any CUDA graph) reads, so nothing here depends on the model's own ``forward`` running.

Rows map to prompt tokens without any state: every embedding row of a video is a ``<|video_pad|>`` of the
prompt, in order, so the rows of a call are the pads from the window start on. Each middle row carries its
index in the middle, which is checked against the prompt (the middle must start right after a
``<|vision_start|>``), so a call whose window start is off by one (vLLM's V1 drafter passes the unshifted
``num_computed_tokens`` with embeddings of the shifted window) is detected and mapped correctly, and an
unmappable call leaves positions alone instead of raising.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from vllm_vtprune.layout import TokenIds, VideoLayout

_DIGIT_BASE = 64  # digits below 64 are exact integers in fp32, bf16 and fp16
_VALUES = 4  # (t, h, w) offset from the middle's first row, and the row's index in the middle


def digits_for(limit: int) -> int:
    """Base-64 digits needed for values up to ``limit``."""
    return max(1, math.ceil(math.log(limit + 1, _DIGIT_BASE)))


def channels_for(limit: int) -> int:
    return _VALUES * digits_for(limit)


def encode_rows(values: torch.Tensor, digits: int, dtype: torch.dtype) -> torch.Tensor:
    """``[L, 4]`` non-negative integers -> ``[L, 4 * digits]`` exact channels of ``dtype``."""
    weights = _DIGIT_BASE ** torch.arange(digits, device=values.device)
    return ((values.long().unsqueeze(-1) // weights) % _DIGIT_BASE).reshape(values.shape[0], _VALUES * digits).to(dtype)


def decode_rows(channels: torch.Tensor, digits: int) -> torch.Tensor:
    """Inverse of :func:`encode_rows`: ``[L, 4 * digits]`` -> ``[L, 4]`` int64."""
    weights = _DIGIT_BASE ** torch.arange(digits, device=channels.device)
    return (channels.float().round().long().reshape(-1, _VALUES, digits) * weights).sum(-1)


# ---- after the tower: the middle's rows ------------------------------------------------------------------
def middle_plan(layout: VideoLayout, per_slice: torch.Tensor, kept: torch.Tensor,
                ids: TokenIds) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Where each middle row comes from, and its unpruned offset from the middle's first row.

    ``per_slice`` [T] and ``kept`` (ascending row indices in ``[0, T*H'*W')``) are the selection's. The middle is
    ``V_0 X_1 V_1 X_2 ... X_{T-1} V_{T-1}``: ``V_t`` the kept tokens of slice ``t``, ``X_t`` the text between
    slices (``<|vision_end|>`` of slice ``t-1``, timestamp ``t``, ``<|vision_start|>``). Returns
    ``is_video`` [L] bool, ``offsets`` [L, 3] and the text rows' token ids in order.
    """
    t_, h_, w_ = layout.grid
    device = kept.device
    ext = max(h_, w_)  # a slice's grid advances positions by max(H', W') (Qwen3-VL's rule)
    text_len = torch.tensor([0] + [len(ts) + 2 for ts in layout.timestamps[1:]], device=device)  # X_t, X_0 empty
    # Unpruned offset of slice t's grid from slice 0's: each slice adds ext, then its text block.
    starts = torch.arange(t_, device=device) * ext + torch.cumsum(text_len, 0)
    block_len = torch.stack([text_len, per_slice.to(device)], 1).flatten()  # X_0 V_0 X_1 V_1 ...
    block = torch.repeat_interleave(torch.arange(2 * t_, device=device), block_len)
    within = torch.arange(block.numel(), device=device) - (torch.cumsum(block_len, 0) - block_len)[block]
    slice_of = block // 2
    is_video = block % 2 == 1
    offsets = torch.empty(block.numel(), 3, dtype=torch.long, device=device)
    # Text rows of X_t: consecutive 1-D positions from slice t-1's vision end (its grid start + ext).
    text_pos = starts[slice_of] - text_len[slice_of] + within
    offsets[~is_video] = text_pos[~is_video].unsqueeze(1)
    cell = kept % (h_ * w_)
    base = starts[kept // (h_ * w_)]
    offsets[is_video] = torch.stack([base, base + cell // w_, base + cell % w_], 1)
    text_ids = [tok for ts in layout.timestamps[1:] for tok in (ids.vision_end, *ts, ids.vision_start)]
    return is_video, offsets, text_ids


# ---- at request start ------------------------------------------------------------------------------------
def request_positions(
    input_tokens: list[int],
    features: Sequence,
    layout_of: Callable[[object], VideoLayout | None],
    ids: TokenIds,
    stock: Callable[[list[int], list], tuple[torch.Tensor, int]],
) -> tuple[torch.Tensor, int]:
    """Positions of a prompt whose pruned videos are laid out as in ``layout``.

    Rebuilds the unpruned prompt (every pruned placeholder replaced by Qwen3-VL's full layout), lets ``stock``
    (Qwen3-VL's own function) place it, and reads each token's position off it: a token outside a middle takes
    its own unpruned position (a kept cell of a video pruned before the tower, its cell's), every middle row the
    position of slice 0's first grid token.
    """
    import dataclasses

    features = sorted(features, key=lambda f: f.mm_position.offset)
    unpruned: list[int] = []
    unpruned_features = []
    src = np.arange(len(input_tokens), dtype=np.int64)
    cursor, shift = 0, 0
    for f in features:
        offset, length = f.mm_position.offset, f.mm_position.length
        layout = layout_of(f)
        body = input_tokens[offset:offset + length]
        if layout is not None and layout.kept < layout.unpruned:
            body = VideoLayout(layout.grid, layout.timestamps, layout.unpruned).prompt_ids(ids)
            src[offset + length:] += len(body) - length
            if layout.exact:
                src[offset:offset + length] = offset + shift + _kept_in_full_layout(layout)
            else:
                prefix, middle = layout.prefix_len, layout.middle_len
                src[offset + prefix:offset + prefix + middle] = offset + shift + prefix
                src[offset + prefix + middle] = offset + shift + len(body) - 1
        unpruned += input_tokens[cursor:offset] + body
        position = dataclasses.replace(f.mm_position, offset=offset + shift, length=len(body))
        unpruned_features.append(dataclasses.replace(f, mm_position=position))
        shift += len(body) - length
        cursor = offset + length
    unpruned += input_tokens[cursor:]
    positions, _ = stock(unpruned, unpruned_features)
    delta = int(positions.max()) + 1 - len(input_tokens)
    return positions[:, torch.from_numpy(src)], delta


def _kept_in_full_layout(layout: VideoLayout) -> np.ndarray:
    """For each token of an exact pruned placeholder, its index in the unpruned placeholder."""
    t, h, w = layout.grid
    keep = np.zeros((t, h * w), dtype=bool)
    keep.flat[list(layout.cells)] = True
    index, start = [], 0
    for ts, cells in zip(layout.timestamps, keep):
        text = len(ts) + 1
        index += range(start, start + text)  # the slice's timestamp and vision start
        index += (start + text + np.flatnonzero(cells)).tolist()  # its kept cells
        index.append(start + text + h * w)  # its vision end
        start += text + h * w + 1
    return np.asarray(index, dtype=np.int64)


# ---- in vLLM's pruning hook ------------------------------------------------------------------------------
def recompute_positions(
    input_ids: list[int] | torch.Tensor,
    embeddings: Sequence[torch.Tensor],
    positions: torch.Tensor,
    num_computed_tokens: int,
    *,
    plain_width: int,
    digits: int,
    ids: TokenIds,
    zero_offsets: bool = False,
) -> tuple[list[torch.Tensor], int, bool]:
    """Write the final positions of the middle rows in this call into ``positions`` (in place).

    ``embeddings``: one request's multimodal embeddings of this step's window, in prompt order (vLLM tags each
    with its ``modality``); middle rows are ``plain_width`` wide plus the position channels. Returns the
    embeddings without the channels, the request's decode offset, and whether the rows could be placed.
    """
    stripped, middle = [], []
    for e in embeddings:
        if e.shape[-1] > plain_width:
            plain = e[:, :plain_width]
            if hasattr(e, "modality"):
                plain.modality = e.modality
            stripped.append(plain)
            middle.append(e[:, plain_width:])
        else:
            stripped.append(e)
            middle.append(None)
    n = positions.shape[-1]
    delta = int(positions[:, -1].max()) + 1 - n  # the prompt never ends inside a middle
    if all(m is None for m in middle):
        return stripped, delta, True
    device = positions.device
    tokens = torch.as_tensor(input_ids, device=device).long()
    pads = (tokens == ids.video_pad).nonzero().flatten()
    first = int(torch.searchsorted(pads, num_computed_tokens))
    for start in (first, first + 1):
        writes = _place(embeddings, middle, pads, start, tokens, positions, digits, ids)
        if writes is not None:
            for rows, values in writes:
                positions[:, rows] = values[:, :1] if zero_offsets else values
            return stripped, delta, True
    return stripped, delta, False


def _place(embeddings, middle, pads, start, tokens, positions, digits, ids):
    """The (prompt indices, [3, n] positions) of every middle tensor if the video rows of this call are the
    pads from ``start`` on; None if any middle row disagrees with the prompt there."""
    writes = []
    cursor = start
    for e, channels in zip(embeddings, middle):
        if channels is None:
            if getattr(e, "modality", None) == "video":
                cursor += e.shape[0]
            continue
        rows = pads[cursor:cursor + e.shape[0]]
        cursor += e.shape[0]
        if rows.numel() != e.shape[0]:
            return None
        values = decode_rows(channels.to(tokens.device), digits)
        first = rows - values[:, 3]  # each row's middle start, by its own index
        if int(first.min()) < 1 or not bool((first == first[0]).all()):
            return None
        before = int(first[0]) - 1
        if int(tokens[before]) != ids.vision_start:
            return None
        base = positions[0, before] + 1
        writes.append((rows, (base + values[:, :3]).T))
    return writes
