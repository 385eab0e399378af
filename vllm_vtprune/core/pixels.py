"""Qwen3-VL's video pixel rows as the pre-tower methods see them: 8-bit levels, one row per merge group.

Row layout (transformers 5.19 ``Qwen3VLVideoProcessor.patchify``, which vLLM 0.32 calls for every video; checked
by ``tests/core/test_core_pixels.py`` against the processor itself): a video of ``video_grid_thw = (T, Hp, Wp)``
patches is ``T*Hp*Wp`` rows of ``C = 3 * 2 * 16 * 16`` values. Rows are ordered ``(t, h_block, w_block, mh, mw)``
with ``h = h_block * m + mh``, ``w = w_block * m + mw`` (``m = spatial_merge_size = 2``): t-major, then the merge
groups in raster order, then the ``m*m`` patches of one group. Columns are ``(channel, frame, y, x)``: channel c
is the contiguous column range ``[c * C/3, (c+1) * C/3)``. So the ``m*m`` consecutive rows of one merge group are
exactly one LLM token, and ``rows.view(T, Hp*Wp / m**2, m*m*C)`` is ``[T, H*W, D]`` on the post-merger grid
``(T, H, W) = (T, Hp/m, Wp/m)``. A clip with an odd frame count repeats its last frame (the processor's padding).

Value representation (vLLM 0.32 ``MultiModalConfig.mm_device_do_normalize``, on by default for Qwen3-VL unless the
Rust frontend is used): with it, vLLM calls the processor with ``do_rescale=do_normalize=False`` and the rows are
the decoded ``uint8`` levels; the tower's ``FusedMMInputNorm`` normalises on device. Without it they are floats
``(level * rescale_factor - mean_c) / std_c``. Pre-tower methods score the integer levels, so their decisions do
not depend on the representation: ``pixel_levels`` maps float rows back with the processor's ``PixelNorm`` (the
mapping is exact: the error of fp32, and of bf16 for std >= 0.25, stays far below half a level) and refuses rows
that are not 8-bit levels under that norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .budget import Grid, check_grid

_LEVEL_TOLERANCE = 0.375  # max distance of a recovered level from an integer; bf16 rounding stays below 0.25


@dataclass(frozen=True)
class PixelNorm:
    """The processor's normalisation ``v = (level * rescale_factor - mean[c]) / std[c]`` (HF ``image_mean``,
    ``image_std``, ``rescale_factor``; vLLM's ``_load_norm_params``). Qwen3-VL: 0.5, 0.5, 1/255."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale_factor: float

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"PixelNorm needs one mean and one std per channel, got {self.mean}, {self.std}")
        if self.rescale_factor == 0 or any(s == 0 for s in self.std):
            raise ValueError("PixelNorm needs a non-zero rescale_factor and non-zero stds")


def pixel_levels(rows: torch.Tensor, norm: PixelNorm | None = None) -> torch.Tensor:
    """The 8-bit levels of pixel rows [N, C]: uint8 [N, C] (``rows`` itself when it is already uint8).

    Float rows are ``norm``-normalised levels, or raw levels (0..255 as floats) when ``norm`` is None. ValueError
    when they are not 8-bit levels under ``norm`` (e.g. normalised rows given without their norm).
    """
    if rows.ndim != 2:
        raise ValueError(f"pixel rows must be 2-D [rows, C], got shape {tuple(rows.shape)}")
    if rows.dtype == torch.uint8:
        return rows
    if not rows.is_floating_point():
        raise ValueError(f"pixel rows must be uint8 or float, got {rows.dtype}")
    values = rows.float()
    if norm is not None:
        channels = len(norm.mean)
        if rows.shape[1] % channels:
            raise ValueError(f"rows of {rows.shape[1]} values do not split into {channels} channels")
        std = torch.tensor(norm.std, dtype=torch.float32, device=rows.device)
        mean = torch.tensor(norm.mean, dtype=torch.float32, device=rows.device)
        # level = (v * std + mean) / rescale, channel c being a contiguous run of C / channels columns
        values = values.view(rows.shape[0], channels, -1)
        values = (values * std[:, None] + mean[:, None]) / norm.rescale_factor
        values = values.view(rows.shape)
    levels = values.round()
    if rows.numel() and bool(
        ((values - levels).abs().max() > _LEVEL_TOLERANCE) | (levels.min() < 0) | (levels.max() > 255)
    ):
        raise ValueError(
            "pixel rows are not 8-bit levels under "
            + (f"{norm}" if norm is not None else "no normalisation (pass the processor's PixelNorm)")
        )
    return levels.to(torch.uint8)


def token_grid(video_grid_thw: Sequence[int], merge_size: int = 2) -> Grid:
    """The post-merger grid ``(T, Hp/m, Wp/m)`` of a video of ``video_grid_thw = (T, Hp, Wp)`` patches."""
    t, hp, wp = check_grid(video_grid_thw)
    if hp % merge_size or wp % merge_size:
        raise ValueError(f"video_grid_thw {[t, hp, wp]} is not divisible by spatial_merge_size={merge_size}")
    return t, hp // merge_size, wp // merge_size


def group_view(levels: torch.Tensor, video_grid_thw: Sequence[int], merge_size: int = 2) -> torch.Tensor:
    """One video's rows [T*Hp*Wp, C] as [T, H*W, m*m*C]: one row per merge group (LLM token), a view."""
    t, h, w = token_grid(video_grid_thw, merge_size)
    unit = merge_size * merge_size
    if levels.shape[0] != t * h * w * unit:
        raise ValueError(f"{levels.shape[0]} pixel rows, grid {list(video_grid_thw)} needs {t * h * w * unit}")
    return levels.reshape(t, h * w, unit * levels.shape[1])


def group_rows(groups: torch.Tensor, merge_size: int = 2) -> torch.Tensor:
    """Pixel row indices [K * m*m] of the merge groups ``groups`` [K] (indices ``t*H*W + g`` within one video)."""
    unit = merge_size * merge_size
    return (groups[:, None] * unit + torch.arange(unit, device=groups.device)).reshape(-1)
