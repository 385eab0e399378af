"""Similarity primitives shared by the methods; every result is fp32 whatever the input dtype.

Inputs keep their dtype (fp32, bf16 or fp16) and are upcast to fp32 one block of rows at a time. On CPU a full
fp32 copy of a video's features (256 MB for 64 slices x 256 tokens x 4096 channels) and full-size elementwise
products cost 5-8x more than the arithmetic itself, mostly in page faults; blocks of about 4 MB stay in cache.
On other devices one block is the whole tensor. The loops below run over fixed-size memory blocks, never over
frames, and the blocking depends only on the tensor's shape and device, so a video's results do not depend on
what else is in the batch.

Cosines follow ``torch.nn.functional.cosine_similarity``: ``a.b / (max(|a|, eps) * max(|b|, eps))``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's default (EVS, DTD, DyCoke, MSSAVT, STC-Cacher)
_CPU_BLOCK_ELEMENTS = 1 << 20  # fp32 elements per block on CPU: 4 MB


def _rows_per_block(x: torch.Tensor) -> int:
    if x.device.type != "cpu":
        return max(1, x.shape[0])
    return max(1, _CPU_BLOCK_ELEMENTS // max(1, x.shape[-1]))


def _group_blocks(n_rows: int, group_rows: int, rows_per_block: int) -> Iterator[tuple[int, int]]:
    """Row ranges covering ``[0, n_rows)``: whole groups while they fit in a block, else pieces of one group."""
    if rows_per_block >= group_rows:
        step = rows_per_block // group_rows * group_rows
        for start in range(0, n_rows, step):
            yield start, min(start + step, n_rows)
        return
    for group_start in range(0, n_rows, group_rows):
        for start in range(group_start, group_start + group_rows, rows_per_block):
            yield start, min(start + rows_per_block, group_start + group_rows)


class _Scratch:
    """fp32 block buffers reused across the blocks of one call, so the block loop allocates nothing."""

    def __init__(self, x: torch.Tensor, rows: int):
        self._shape = (rows, x.shape[-1])
        self._device = x.device
        self._buffers: dict[str, torch.Tensor] = {}

    def buffer(self, name: str, rows: int) -> torch.Tensor:
        if name not in self._buffers:
            self._buffers[name] = torch.empty(self._shape, dtype=torch.float32, device=self._device)
        return self._buffers[name][:rows]

    def fp32(self, name: str, block: torch.Tensor) -> torch.Tensor:
        """``block`` itself if fp32, else its fp32 copy in buffer ``name`` (valid until that buffer is reused)."""
        if block.dtype == torch.float32:
            return block
        return self.buffer(name, block.shape[0]).copy_(block)


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row of ``x`` [N, C] -> [N]."""
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    step = _rows_per_block(x)
    scratch = _Scratch(x, step)
    for start, stop in _group_blocks(x.shape[0], 1, step):
        torch.linalg.vector_norm(scratch.fp32("x", x[start:stop]), dim=-1, out=out[start:stop])
    return out


def shifted_row_cosines(
    x: torch.Tensor, shifts: Sequence[int], norms: torch.Tensor, eps: float = COSINE_EPS
) -> list[torch.Tensor]:
    """For each shift s, ``out_s[i] = cos(x[i + s], x[i])`` -> [N - s]; ``x`` [N, C] with row ``norms`` [N].

    Rows at a fixed offset are neighbours: the same position in the next slice (shift H*W), the token below
    (shift W) or to the right (shift 1). Computed as ``F.cosine_similarity`` does (divide each row by its clamped
    norm, multiply, sum), so fp32 results match it bit for bit. Each block normalises its rows and the
    ``max(shifts)`` rows after them once, for all shifts; blocks are at least that long, so no row is normalised
    more than twice.
    """
    n_rows = x.shape[0]
    outs = [torch.empty(max(0, n_rows - s), dtype=torch.float32, device=x.device) for s in shifts]
    clamped = norms.clamp_min(eps)[:, None]
    reach = max(shifts, default=0)
    step = max(_rows_per_block(x), reach)
    scratch = _Scratch(x, step + reach)
    for start, stop in _group_blocks(max(0, n_rows - min(shifts, default=0)), 1, step):
        window_stop = min(stop + reach, n_rows)
        window = x[start:window_stop]
        unit = scratch.buffer("unit", window_stop - start)
        if window.dtype == torch.float32:
            torch.div(window, clamped[start:window_stop], out=unit)
        else:  # upcast (a plain copy), then divide in place: a mixed-dtype division is ~1.5x slower on CPU
            unit.copy_(window).div_(clamped[start:window_stop])
        for shift, out in zip(shifts, outs):
            rows = min(stop, out.shape[0]) - start
            if rows > 0:
                product = torch.mul(unit[shift : shift + rows], unit[:rows], out=scratch.buffer("product", rows))
                torch.sum(product, dim=-1, out=out[start : start + rows])
    return outs


def rows_cosine(a: torch.Tensor, b: torch.Tensor, norm_a: torch.Tensor, eps: float = COSINE_EPS) -> torch.Tensor:
    """Row-wise ``cos(a_i, b_i)`` of two [N, C] tensors (one slice) as ``F.cosine_similarity``; ``norm_a`` given."""
    norm_b = torch.linalg.vector_norm(b.float(), dim=-1)
    a_unit = a.float() / norm_a.clamp_min(eps)[:, None]
    return torch.sum(a_unit * (b.float() / norm_b.clamp_min(eps)[:, None]), dim=-1)


def group_weighted_sums(x: torch.Tensor, group_rows: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``out[g] = sum_i w_i x_i`` over the ``group_rows`` consecutive rows of group g: [N, C] -> [N/L, C].

    ``weights`` [N] default to 1 (plain sums).
    """
    n_rows, channels = x.shape
    out = torch.zeros(n_rows // group_rows, channels, dtype=torch.float32, device=x.device)
    step = _rows_per_block(x)
    scratch = _Scratch(x, step)
    for start, stop in _group_blocks(n_rows, group_rows, step):
        block = scratch.fp32("x", x[start:stop])
        w = None if weights is None else weights[start:stop]
        first = start // group_rows
        if stop - start >= group_rows:  # whole groups
            groups = block.view(-1, group_rows, channels)
            sums = groups.sum(1) if w is None else torch.bmm(w.view(-1, 1, group_rows), groups).squeeze(1)
            out[first : first + sums.shape[0]] = sums
        else:  # a piece of one group
            out[first] += block.sum(0) if w is None else w @ block
    return out


def group_means_and_variances(
    x: torch.Tensor, group_rows: int, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance of each channel over each group's rows (two-pass, like ``torch.var``):
    [N, C] -> ([N/L, C], [N/L, C]).

    valid: bool [N], only these rows count (rows outside it must be zero; an empty group gives zeros). The
    statistics over all L rows are rescaled by ``L / count``, exactly 1 for a full group, so full groups give
    the same bits as without ``valid``.
    """
    n_rows, channels = x.shape
    means = group_weighted_sums(x, group_rows) / group_rows
    if valid is not None:
        scale = (group_rows / valid.view(-1, group_rows).sum(1).clamp_min(1)).unsqueeze(1)
        means = means * scale
        row_weights = valid.to(torch.float32).unsqueeze(1)
    out = torch.zeros_like(means)
    step = _rows_per_block(x)
    scratch = _Scratch(x, step)
    for start, stop in _group_blocks(n_rows, group_rows, step):
        block = scratch.fp32("x", x[start:stop])
        first = start // group_rows
        deviation = scratch.buffer("deviation", stop - start)
        if stop - start >= group_rows:
            groups = block.view(-1, group_rows, channels)
            count = groups.shape[0]
            centred = torch.sub(groups, means[first : first + count, None], out=deviation.view_as(groups))
            if valid is not None:  # absent rows deviate by 0, not by -mean
                centred.mul_(row_weights[start:stop].view(count, group_rows, 1))
            out[first : first + count] = centred.square_().sum(1)
        else:
            centred = torch.sub(block, means[first], out=deviation)
            if valid is not None:
                centred.mul_(row_weights[start:stop])
            out[first] += centred.square_().sum(0)
    variances = out / group_rows
    return means, variances if valid is None else variances * scale


def group_anchor_dots(
    x: torch.Tensor, group_rows: int, anchors: torch.Tensor, *, squared: bool = False
) -> torch.Tensor:
    """``out[i, a] = x_i . anchors[g(i), a]`` (or ``x_i**2 . anchors``): x [N, C], anchors [N/L, A, C] -> [N, A].

    With ``squared=True`` and a 0/1 channel mask as anchor this is the squared norm over the masked channels.
    """
    n_rows, channels = x.shape
    out = torch.empty(n_rows, anchors.shape[1], dtype=torch.float32, device=x.device)
    step = _rows_per_block(x)
    scratch = _Scratch(x, step)
    for start, stop in _group_blocks(n_rows, group_rows, step):
        block = scratch.fp32("x", x[start:stop])
        if squared:
            block = torch.square(block, out=scratch.buffer("square", stop - start))
        first = start // group_rows
        if stop - start >= group_rows:
            groups = block.view(-1, group_rows, channels)
            count = groups.shape[0]
            dots = torch.bmm(groups, anchors[first : first + count].transpose(1, 2))
            out[start:stop] = dots.reshape(-1, anchors.shape[1])
        else:
            out[start:stop] = block @ anchors[first].T
    return out


def gaussian_kernel_sum(sq_dist: torch.Tensor, bandwidths: tuple[float, ...]) -> torch.Tensor:
    """``sum_a exp(-d / (2 a))`` over the bandwidths a (STC's multi-bandwidth Gaussian similarity)."""
    return sum(torch.exp(-sq_dist / (2.0 * a)) for a in bandwidths)
