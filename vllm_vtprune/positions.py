"""M-RoPE positions for pruned videos: every kept token sits exactly where it sat unpruned.

A pruned video occupies one placeholder range of the prompt: per temporal slice its timestamp text,
``<|vision_start|>``, the kept ``<|video_pad|>`` tokens and ``<|vision_end|>``. How many pads each slice keeps
can depend on the vision tower's features (V-CAST, temporal stages), so the positions *inside* the range are
only known after the tower runs. Everything else is known before: the unpruned extent of a video depends on
its grid alone (each slice advances by max(H', W') whatever it keeps).

So the work is split in two:
- at request start, :func:`prompt_positions` gives every token outside a pruned range its unpruned
  position, every token inside one the position of the range's first token (its *base*), and the decode
  offset of the unpruned prompt;
- after the tower, the model appends each range row's offset from that base to the row's embedding
  (:func:`encode_offsets`); just before the language model runs, :func:`decode_offsets` recovers the
  offsets and they are added to the base positions. The offsets travel with the embedding, so they survive
  vLLM's encoder cache, chunked prefill that splits a video, and prefix-cache hits (cached tokens need no
  position at all).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# Offsets are written as base-64 digits: exact in bf16 and fp16 (integers up to 256 / 2048 are exact).
_DIGIT_BASE = 64
_DIGITS = 3
MAX_OFFSET = _DIGIT_BASE**_DIGITS - 1
OFFSET_CHANNELS = 3 * _DIGITS  # (t, h, w) offsets, _DIGITS digits each


def encode_offsets(offsets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[L, 3]`` non-negative integer offsets -> ``[L, OFFSET_CHANNELS]`` channels of ``dtype``."""
    if offsets.numel() and (int(offsets.min()) < 0 or int(offsets.max()) > MAX_OFFSET):
        raise ValueError(f"video position offsets must lie in [0, {MAX_OFFSET}]")
    weights = _DIGIT_BASE ** torch.arange(_DIGITS, device=offsets.device)
    digits = (offsets.long().unsqueeze(-1) // weights) % _DIGIT_BASE  # [L, 3, D]
    return digits.reshape(offsets.shape[0], OFFSET_CHANNELS).to(dtype)


def decode_offsets(channels: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_offsets`: ``[L, OFFSET_CHANNELS]`` -> ``[3, L]`` int64."""
    digits = channels.float().round().long().reshape(-1, 3, _DIGITS)
    weights = _DIGIT_BASE ** torch.arange(_DIGITS, device=channels.device)
    return (digits * weights).sum(-1).T


def prompt_index_map(num_tokens: int, spans: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Map each index of the pruned prompt to an index of the unpruned prompt.

    ``spans`` are ``(offset, pruned_length, unpruned_length)`` of the pruned ranges, sorted by offset.
    Tokens outside ranges map to themselves in the unpruned prompt; every row of a range maps to the
    range's first unpruned token (its base).
    """
    src = np.arange(num_tokens, dtype=np.int64)
    shift = 0
    for offset, pruned_len, unpruned_len in spans:
        src[offset + pruned_len:] += unpruned_len - pruned_len
        src[offset:offset + pruned_len] = offset + shift
        shift += unpruned_len - pruned_len
    return src
