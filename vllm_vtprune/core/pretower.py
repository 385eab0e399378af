"""The pre-tower driver: merge groups kept per video, decided from ``pixel_values_videos`` in the API server.

``select_pretower`` runs a pre-tower method (``stage = "pre_tower"``: ``novelty``, ``dedup``) on each video's 8-bit
pixel levels (``pixels.py``; one row per merge group = one LLM token) with the same contract as the post-tower
driver (``selection._check_contract``: exact ``total_budget``, per-slice floor), one video at a time so results
never depend on the batch. Its ``PreTowerSelection`` is a ``Selection`` (``kept`` are indices ``t*H*W + g`` on the
post-merger grid, ascending, as the post-tower methods return), plus what the worker needs to run the tower on the
kept groups only:

- ``pixel_rows()``: the rows of ``pixel_values_videos`` to ship (the kept groups' ``m*m`` patch rows, minus those
  of repeated slices); nothing else of the video has to cross to the worker.
- ``slice_source``: per slice, -1 or the earlier slice of the same video whose kept groups and pixels it repeats
  exactly. The tower output of a slice depends only on its own kept pixels and their (h, w) (attention is per
  slice; Qwen3-VL's ViT has no temporal position), so the worker computes such a slice once and copies it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .budget import Grid
from .config import PruneConfig
from .pixels import PixelNorm, group_rows, group_view, pixel_levels, token_grid
from .registry import get_method
from .selection import Selection, _check_contract, total_budget


@dataclass(kw_only=True)
class PreTowerSelection(Selection):
    """Groups kept before the tower for one video (``state`` is always None).

    grid: the post-merger grid (T, H, W).
    slice_source: int64 [T], -1 or the index of the earlier identical slice (see the module docstring).
    """

    grid: Grid
    slice_source: torch.Tensor

    def computed(self) -> torch.Tensor:
        """The kept groups the tower must compute (those of slices with no source), ascending."""
        t, h, w = self.grid
        owner = self.slice_source.to(self.kept.device)[self.kept // (h * w)]
        return self.kept[owner < 0]

    def pixel_rows(self, merge_size: int = 2) -> torch.Tensor:
        """Rows of this video's ``pixel_values_videos`` the worker needs, ascending."""
        return group_rows(self.computed(), merge_size)

    def positions(self) -> torch.Tensor:
        """int64 [B1, 3]: (t, h, w) of each kept group on the post-merger grid, the positions the LLM must see."""
        t, h, w = self.grid
        return torch.stack([self.kept // (h * w), self.kept % (h * w) // w, self.kept % w], dim=1)


@torch.no_grad()
def select_pretower(
    pixel_values_videos: torch.Tensor,
    video_grid_thw: torch.Tensor | Sequence[Sequence[int]],
    configs: Sequence[PruneConfig],
    *,
    merge_size: int = 2,
    norm: PixelNorm | None = None,
) -> list[PreTowerSelection]:
    """Select the merge groups the tower runs on, per video.

    pixel_values_videos: [sum_i T_i*Hp_i*Wp_i, C] the videos' rows, concatenated (uint8 levels, or floats
        normalised with ``norm``; see ``pixels.pixel_levels``).
    video_grid_thw: per video (T, Hp, Wp) in patches, as the processor returns it.
    configs: per video, a config of a pre-tower method (a two-stage config's ``pre_tower``).
    """
    grids_thw = video_grid_thw.tolist() if isinstance(video_grid_thw, torch.Tensor) else list(video_grid_thw)
    if len(configs) != len(grids_thw):
        raise ValueError(f"got {len(grids_thw)} videos but {len(configs)} configs")
    sizes = [math.prod(token_grid(g, merge_size)) * merge_size**2 for g in grids_thw]
    if pixel_values_videos.ndim != 2 or pixel_values_videos.shape[0] != sum(sizes):
        raise ValueError(
            f"pixel_values_videos {tuple(pixel_values_videos.shape)} does not hold the {sum(sizes)} rows of "
            f"grids {grids_thw}"
        )
    selections = []
    for grid_thw, cfg, rows in zip(grids_thw, configs, pixel_values_videos.split(sizes)):
        grid = token_grid(grid_thw, merge_size)
        levels = group_view(pixel_levels(rows, norm), grid_thw, merge_size)
        selections.append(_select_video(levels, grid, cfg))
    return selections


def _select_video(levels: torch.Tensor, grid: Grid, cfg: PruneConfig) -> PreTowerSelection:
    method = get_method(cfg.method)
    if method.stage != "pre_tower":
        raise ValueError(f"select_pretower needs a pre-tower method; {cfg.method!r} runs on the tower's output")
    budget = total_budget(grid, cfg)
    keep, _ = method.select(levels, grid, budget, cfg, None)
    per_slice = _check_contract(keep, grid, budget, cfg)
    return PreTowerSelection(
        kept=keep.flatten().nonzero().flatten(),
        per_slice=per_slice,
        state=None,
        grid=grid,
        slice_source=repeated_slices(levels, keep),
    )


def repeated_slices(levels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """int64 [T]: for each slice, -1 or the first earlier slice with the same kept groups and identical kept
    levels. Only slices whose keep mask occurs more than once are candidates; among them a 128-bit BLAKE2 digest of
    the kept levels finds earlier matches (hashing bytes is C code, like the slice cache's keys), confirmed by exact
    comparison, so a collision cannot alias two slices."""
    t = levels.shape[0]
    source = torch.full((t,), -1, dtype=torch.long)
    keep_cpu = keep.cpu()
    _, mask_id = torch.unique(keep_cpu, dim=0, return_inverse=True)
    shared = torch.bincount(mask_id)[mask_id] > 1
    first_with: dict[tuple[int, bytes], int] = {}
    for s in shared.nonzero().flatten().tolist():
        kept = levels[s][keep[s]].cpu()
        owner = first_with.setdefault(
            (int(mask_id[s]), hashlib.blake2b(kept.numpy().tobytes(), digest_size=16).digest()), s
        )
        if owner != s and torch.equal(kept, levels[owner][keep[owner]].cpu()):
            source[s] = owner
    return source.to(keep.device)
