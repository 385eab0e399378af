"""``stc``: STC-Pruner, spatio-temporal anchor pruning before the LLM (arXiv 2512.00891, CVPR 2026).

Follows the released code (``lern-to-write/STC`` @ 9b13ce0, ``model/prune.py::STC_Pruner``).

``strategy="gaussian"`` (default, what produced the released numbers), per chunk:

1. Channel screening: keep the ``channel_keep_ratio`` (0.5) of channels with the lowest population variance over
   the chunk's tokens, in ascending-variance order.
2. Memory: append the chunk mean (in those channels); the temporal anchor is the mean of all chunk means so far,
   *including* the current one, normalised.
3. Spatial anchor: the slice mean of the normalised tokens (not re-normalised).
4. Score ``G(x, frame_anchor) + G(x, memory_anchor)`` with ``G(x, c) = sum_a exp(-|x - c|^2 / (2a))``,
   ``a in {1/8, 1/4, 1/2, 1, 2}``, on normalised tokens; keep the k LOWEST scores of each slice (the most novel).

``strategy="dual_anchor"`` (the paper's formulation, in the refactored code): score
``alpha * (1 - cos(x, memory_anchor)) + (1 - alpha) * (1 - cos(x, frame_anchor))``, alpha = 0.5; keep the highest.
Screening and memory are the same.

Released quirks kept on purpose: channels are re-screened per chunk and the memory averages chunk means whose
coordinates are each chunk's own ascending-variance channel order (so it mixes channels across chunks).

Deviations:

- Budget: the released code keeps a fixed ``token_per_frame`` (60 of 196); here ``k = max(min_k, clip(round(R*H*W),
  1, H*W))`` per slice (Python round), total ``T * k``.
- Chunking: the released code streams one frame per chunk (ReKV, ``encode_chunk_size=1``). By default
  (``chunk_slices=0``) one call is one chunk: screening and the memory update use all of the call's slices, and
  the memory update happens once per call. With ``chunk_slices=s > 0`` every run of s slices is a chunk, screened
  on its own and appended to the memory in order; this equals feeding the s-slice chunks one call at a time
  (``s=1`` is the released per-frame protocol, one Qwen3-VL slice being 2 frames) but runs as one vectorised pass.
- The memory is a running sum and count (``StreamState``) instead of a list of means.
- Scores are fp32; distances use ``|x|^2 + |c|^2 - 2 x.c`` instead of materialising ``x - c``; ties go to the
  lower index (the released ``topk`` leaves them unspecified); at least one channel is kept.

Partial grid (second stage after a pre-tower stage; ``valid`` [T, H*W], ``n_t`` groups present in slice t):
channel variances, chunk means (hence the memory) and frame anchors are taken over the groups present only; a
chunk with no group present adds nothing to the memory (neither a mean nor a count). Per slice
``k_t = min(min_k, n_t)`` plus ``split_by_room`` of the rest of the budget by the room ``n_t - floor`` left, i.e.
every slice keeps about the same fraction of its groups, which is the released "same count per frame" on a full
grid (where it gives exactly the counts above); the top ``k_t`` is taken among the groups present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from .budget import ratio_budget, split_with_floor
from .options import MethodOptions, option_error
from .ranking import top_k_mask
from .registry import PruningMethod, register_method
from .similarity import (
    COSINE_EPS,
    gaussian_kernel_sum,
    group_anchor_dots,
    group_means_and_variances,
    group_weighted_sums,
)
from .state import StreamState

if TYPE_CHECKING:
    from .budget import Grid
    from .config import PruneConfig

BANDWIDTHS = (1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default, used by the released code


@dataclass(frozen=True)
class StcOptions(MethodOptions):
    strategy: Literal["gaussian", "dual_anchor"] = "gaussian"
    channel_keep_ratio: float = 0.5  # fraction of channels kept by variance screening
    alpha: float = 0.5  # dual_anchor: weight of the temporal (memory) anchor
    chunk_slices: int = 0  # slices per chunk; 0 = the whole call is one chunk

    def validate(self) -> None:
        if not 0.0 < self.channel_keep_ratio <= 1.0:
            raise option_error("channel_keep_ratio", f"must be in (0, 1], got {self.channel_keep_ratio}")
        if not 0.0 <= self.alpha <= 1.0:
            raise option_error("alpha", f"must be in [0, 1], got {self.alpha}")
        if self.chunk_slices < 0:
            raise option_error("chunk_slices", f"must be >= 0 (0: one chunk per call), got {self.chunk_slices}")


@dataclass
class _Memory:
    total: torch.Tensor  # [C'] sum of chunk means
    count: int


def _initial_memory(state: StreamState | None, kept_channels: int, device: torch.device) -> _Memory:
    if state is None or state.memory_sum is None:
        return _Memory(torch.zeros(kept_channels, device=device), 0)
    if state.memory_sum.shape != (kept_channels,):
        raise ValueError(
            f"STC stream state holds a memory of {tuple(state.memory_sum.shape)} channels but these features keep "
            f"{kept_channels}; a stream must keep the same model and channel_keep_ratio"
        )
    return _Memory(state.memory_sum.to(device), state.memory_count)


def _score_chunks(
    x: torch.Tensor,
    slices_per_chunk: int,
    kept_channels: int,
    memory: _Memory,
    opts: StcOptions,
    valid: torch.Tensor | None,
) -> tuple[torch.Tensor, _Memory]:
    """Scores [S, HW] of consecutive equal chunks ``x`` [S, HW, C] (zero outside ``valid`` [S, HW], if given), and
    the memory after appending them.

    Screened channels are handled in full channel space: anchors are zero outside a chunk's kept channels, so
    ``x . anchor`` equals the dot product of the screened token with the screened anchor, with no gathered copy.
    """
    slices, hw, channels = x.shape
    chunks = slices // slices_per_chunk
    chunk_rows = slices_per_chunk * hw
    flat = x.view(slices * hw, channels)

    means, variances = group_means_and_variances(flat, chunk_rows, None if valid is None else valid.flatten())
    kept = torch.argsort(variances, dim=1, stable=True)[:, :kept_channels]
    chunk_means = means.gather(1, kept)  # [chunks, C'], in ascending-variance order
    running = torch.cumsum(torch.cat([memory.total[None], chunk_means]), dim=0)[1:]
    if valid is None:
        counts = memory.count + torch.arange(1, chunks + 1, device=x.device)
    else:  # an empty chunk's mean is zero and does not count
        counts = memory.count + torch.cumsum(valid.view(chunks, chunk_rows).any(1), 0)
    memory_unit = torch.nn.functional.normalize(running / counts.clamp_min(1)[:, None], dim=-1)
    zeros = torch.zeros(chunks, channels, device=x.device)
    channel_mask = zeros.scatter(1, kept, 1.0)
    memory_anchor = zeros.scatter(1, kept, memory_unit)

    # Token norms over the kept channels; 1/|x| normalises (F.normalize semantics).
    per_slice_mask = channel_mask.repeat_interleave(slices_per_chunk, dim=0)
    norms = group_anchor_dots(flat, hw, per_slice_mask[:, None], squared=True)[:, 0].sqrt()
    inverse = 1.0 / norms.clamp_min(NORMALIZE_EPS)
    frame_anchor = group_weighted_sums(flat, hw, inverse) / hw * per_slice_mask  # mean of normalised tokens
    if valid is not None:  # absent tokens are zero; hw / n_t is exactly 1 for a full slice
        frame_anchor = frame_anchor * (hw / valid.sum(1).clamp_min(1)).unsqueeze(1)
    anchors = torch.stack([frame_anchor, memory_anchor.repeat_interleave(slices_per_chunk, dim=0)], dim=1)
    dots = (group_anchor_dots(flat, hw, anchors) * inverse[:, None]).view(slices, hw, 2)  # x_hat . anchor
    anchor_sq = anchors.square().sum(-1)[:, None, :]  # [S, 1, 2]

    if opts.strategy == "gaussian":
        unit_sq = (norms * inverse).square().view(slices, hw, 1)  # 1, or 0 for an all-zero token
        kernels = gaussian_kernel_sum(unit_sq + anchor_sq - 2.0 * dots, BANDWIDTHS)
        scores = kernels.sum(-1)
    else:
        cos = dots / anchor_sq.sqrt().clamp_min(COSINE_EPS)
        scores = opts.alpha * (1.0 - cos[..., 1]) + (1.0 - opts.alpha) * (1.0 - cos[..., 0])
    return scores, _Memory(running[-1], int(counts[-1]))


@register_method
class StcPruner(PruningMethod):
    name = "stc"
    Options = StcOptions
    partial_grid = True

    @classmethod
    def uses_stream_state(cls, cfg: PruneConfig) -> bool:
        return True

    @classmethod
    def total_budget(cls, grid: Grid, cfg: PruneConfig) -> int:
        t, h, w = grid
        return t * max(cfg.min_tokens_per_slice, ratio_budget(h * w, cfg.retention))

    @classmethod
    def select(
        cls,
        x: torch.Tensor,
        grid: Grid,
        budget: int,
        cfg: PruneConfig,
        state: StreamState | None,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, StreamState]:
        opts: StcOptions = cls.options(cfg)
        t, hw, channels = x.shape
        kept_channels = max(1, int(channels * opts.channel_keep_ratio))
        memory = _initial_memory(state, kept_channels, x.device)
        chunk = min(opts.chunk_slices or t, t)
        # Whole chunks in one pass, then the shorter last chunk, if any, after them.
        full = t // chunk * chunk
        parts = []
        for start, stop, size in ((0, full, chunk), (full, t, t - full)):
            if stop > start:
                part_valid = None if valid is None else valid[start:stop]
                scores, memory = _score_chunks(x[start:stop], size, kept_channels, memory, opts, part_valid)
                parts.append(scores)
        # The same count per slice on a full grid, as released (a caller's budget that t does not divide gives
        # the first slices one more); the same fraction of each slice's groups on a partial grid.
        counts = torch.full((t,), hw, device=x.device) if valid is None else valid.sum(1)
        per_slice = split_with_floor(counts, budget, cfg.min_tokens_per_slice)
        keep = top_k_mask(torch.cat(parts), per_slice, largest=opts.strategy == "dual_anchor", eligible=valid)
        return keep, StreamState(method=cls.name, memory_sum=memory.total, memory_count=memory.count)
