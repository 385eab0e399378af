"""``VideoEncoder``: runs an ``EncodePlan`` (``plan.py``) on vLLM's Qwen3-VL vision tower, with the slice cache.

Per ``encode`` call: plan the batch (roles, cache hits, aliases), take the hits from the slice cache, then one
tower pass for everything computed, all videos batched: the stock ``visual(pixels, grid)`` when no slice is
selective (the unmodified call on the unmodified input when nothing is cached either, so outputs are
bit-identical to vLLM's), otherwise :func:`run_selective_tower` (references and exact slices run the stock
block computation; selective slices are batched per ``(H, W, ratio)``). Computed slices with a key go into the
cache; each video's output is assembled from its slices' rows (views where they are one contiguous range).

The tower is timed without device synchronisation (``timing.StageTimer``: CUDA events on GPU, wall clock on
CPU); ``EncodeStats.tower_seconds`` is read once the device has finished (the model reads it after its own sync).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from vllm_vtprune.timing import StageTimer

from .cacher_config import CacherConfig
from .plan import EncodePlan, Role, grid_runs, plan_encode, selective_layout
from .selective import SplitMemo, run_selective_tower
from .slice_cache import SliceCache


@dataclass
class EncodeStats:
    """What one ``encode`` call did (for metrics; ``estimate.SavedSecondsEstimate`` turns it into seconds saved)."""

    slices_total: int = 0
    slices_from_cache: int = 0
    slices_computed: int = 0
    cacher_selective_slices: int = 0
    tokens_total: int = 0  # patch tokens of every slice requested
    tokens_computed: int = 0  # patch tokens of the slices the tower computed (selective ones at full count)
    references_recomputed: int = 0  # cached references recomputed because a dependant missed
    tower_calls: int = 0
    slice_cache_bytes: int = 0  # the slice cache's size after the call
    timer: StageTimer | None = field(default=None, repr=False)  # the tower call's, when there was one

    @classmethod
    def of(cls, plan: EncodePlan) -> EncodeStats:
        return cls(
            slices_total=len(plan.slices),
            slices_from_cache=plan.count(Role.CACHED),
            slices_computed=plan.count(Role.FULL) + plan.count(Role.SELECTIVE),
            cacher_selective_slices=plan.count(Role.SELECTIVE),
            tokens_total=plan.tokens_total,
            tokens_computed=plan.tokens_computed,
            references_recomputed=plan.references_recomputed,
        )

    @property
    def tower_seconds(self) -> float:
        """Seconds the tower call took (0 without one). On CUDA read it only once the device has finished the
        call's work (e.g. after the model's own synchronisation)."""
        return self.timer.seconds()["tower"] if self.timer is not None else 0.0


def _row_ranges_cat(src: torch.Tensor, ranges: list[tuple[int, int]]) -> torch.Tensor:
    """``src`` rows of the given ``(start, stop)`` ranges, adjacent ranges merged; the tensor itself if whole."""
    merged: list[list[int]] = []
    for a, b in ranges:
        if merged and merged[-1][1] == a:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    if len(merged) == 1 and merged[0] == [0, src.shape[0]]:
        return src
    return torch.cat([src[a:b] for a, b in merged], dim=0)


class VideoEncoder:
    """Runs the vision tower for a batch of videos with STC-Cacher and/or the exact slice cache.

    ``cache_bytes``: budget of the slice cache (0 disables it); ``cache_device``: where cached outputs live
    (default: where the tower puts them; ``"cpu"`` keeps GPU memory free at the cost of a copy per hit).
    """

    def __init__(
        self, visual: torch.nn.Module, *, cache_bytes: int = 0, cache_device: str | torch.device | None = None
    ) -> None:
        self.visual = visual
        self.cache = SliceCache(cache_bytes, device=cache_device)
        self._memo = SplitMemo()

    @property
    def merge_unit(self) -> int:
        return self.visual.spatial_merge_size**2

    def clear(self) -> None:
        """Drop the slice cache and any memoised split-qkv weights (wire to vLLM's encoder-cache reset, which
        vLLM also calls after ``reload_weights``)."""
        self.cache.clear()
        self._memo.entries.clear()

    @torch.inference_mode()
    def encode(
        self,
        pixel_values: torch.Tensor,
        grid_thw: torch.Tensor | Sequence[Sequence[int]],
        cachers: Sequence[CacherConfig] | None = None,
        slice_keys: Sequence[torch.Tensor | None] | None = None,
        use_slice_cache: Sequence[bool] | None = None,
    ) -> tuple[list[torch.Tensor], EncodeStats]:
        """Per-video merger outputs ``[T*H*W/4, out_hidden * (1 + deepstack)]`` and what it took.

        ``pixel_values``: vLLM's ``pixel_values_videos`` for the batch, ``[sum T*H*W, C]``; ``grid_thw``: per
        video ``[T, H, W]`` in patches. ``cachers`` / ``slice_keys`` / ``use_slice_cache``: one per video
        (defaults: cacher off, no keys, no cache).
        """
        if isinstance(grid_thw, torch.Tensor):
            grid_thw = grid_thw.tolist()
        grid = [[int(x) for x in g] for g in grid_thw]
        n = len(grid)
        cachers = [CacherConfig.from_dict(c) for c in cachers] if cachers is not None else [CacherConfig()] * n
        keys = list(slice_keys) if slice_keys is not None else [None] * n
        use_cache = list(use_slice_cache) if use_slice_cache is not None else [False] * n
        for name, seq in (("cachers", cachers), ("slice_keys", keys), ("use_slice_cache", use_cache)):
            if len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} entries for {n} videos")
        rows = sum(t * h * w for t, h, w in grid)
        if pixel_values.shape[0] != rows:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} rows, grid_thw needs {rows}")
        plan = plan_encode(grid, cachers, keys, use_cache, self.cache if self.cache.max_bytes > 0 else None)
        return self.run(plan, pixel_values)

    def run(self, plan: EncodePlan, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], EncodeStats]:
        """Execute ``plan`` on ``pixel_values`` (the whole batch's rows): ``encode`` after planning."""
        stats = EncodeStats.of(plan)
        hits = {i: self.cache.get(s.key) for i, s in enumerate(plan.slices) if s.role is Role.CACHED}
        computed = plan.computed
        out, out_start = None, {}  # out_start: slice index -> its first row of ``out``
        if computed:
            timer = StageTimer(self.visual.device)
            out = self._tower(plan, pixel_values, computed, out_start)
            timer.mark("tower")
            stats.timer, stats.tower_calls = timer, 1
        for i in computed:
            s = plan.slices[i]
            if s.key is not None:
                a = out_start[i]
                self.cache.put(s.key, out[a : a + s.patches // self.merge_unit])
        stats.slice_cache_bytes = self.cache.bytes_used
        return self._assemble(plan, hits, out, out_start), stats

    def _tower(self, plan: EncodePlan, pixel_values: torch.Tensor, computed: list[int],
               out_start: dict[int, int]) -> torch.Tensor:
        """Tower outputs of the computed slices, in plan order; fills ``out_start``."""
        mu = self.merge_unit
        at = 0
        for i in computed:
            out_start[i] = at
            at += plan.slices[i].patches // mu
        first_row = [0]  # each video's first pixel row
        for t, h, w in plan.grid:
            first_row.append(first_row[-1] + t * h * w)

        def pixel_range(i: int) -> tuple[int, int]:
            s = plan.slices[i]
            a = first_row[s.video] + s.t * s.patches
            return a, a + s.patches

        if len(computed) == len(plan.slices):  # every slice, once, in order: the stock call itself
            px, tower_grid = pixel_values, [list(g) for g in plan.grid]
        else:
            px = _row_ranges_cat(pixel_values, [pixel_range(i) for i in computed])
            tower_grid = grid_runs([(plan.slices[i].height, plan.slices[i].width) for i in computed])
        if not plan.groups:
            return self.visual(px, grid_thw=tower_grid)
        layout = selective_layout(plan)
        return run_selective_tower(
            self.visual,
            px,
            [(plan.slices[i].height, plan.slices[i].width) for i in layout.full],
            [out_start[i] * mu for i in layout.full],
            [group for group, _ in layout.groups],
            [[out_start[i] * mu for i in members] for _, members in layout.groups],
            self._memo,
        )

    def _assemble(self, plan: EncodePlan, hits: dict[int, torch.Tensor], out: torch.Tensor | None,
                  out_start: dict[int, int]) -> list[torch.Tensor]:
        """Per-video outputs from the slices' rows: cache hits, computed rows, an alias's source rows (views where
        a video's slices are one contiguous range of ``out``)."""
        device = self.visual.device
        pieces: list[list[list]] = [[] for _ in plan.grid]  # per video: [tensor, start, stop] runs
        for i, s in enumerate(plan.slices):
            runs = pieces[s.video]
            if s.role is Role.CACHED:
                val = hits[i] if hits[i].device == device else hits[i].to(device, non_blocking=True)
                runs.append([val, 0, val.shape[0]])
                continue
            a = out_start[s.source if s.role is Role.ALIAS else i]
            b = a + s.patches // self.merge_unit
            if runs and runs[-1][0] is out and runs[-1][2] == a:
                runs[-1][2] = b
            else:
                runs.append([out, a, b])
        results = []
        for runs in pieces:
            if not runs:
                results.append(torch.empty(0, self.visual.out_hidden_size, device=device, dtype=self.visual.dtype))
            elif len(runs) == 1:
                ten, a, b = runs[0]
                results.append(ten[a:b] if (a, b) != (0, ten.shape[0]) else ten)
            else:
                results.append(torch.cat([ten[a:b] for ten, a, b in runs], dim=0))
        return results
