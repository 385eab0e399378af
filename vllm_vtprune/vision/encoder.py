"""``VideoEncoder``: Qwen3-VL's vision tower for a batch of videos, with the exact slice cache and STC-Cacher.

Per call (``encode``), per video and temporal slice:

1. Roles. With the cacher active for a video (``CacherConfig.active``: enabled, ratio < 1, interval > 1), slice
   ``t`` is a reference when ``t % refresh_interval == 0`` and otherwise a selective slice whose reference is
   ``t - t % refresh_interval`` (same video, same call). Otherwise every slice is computed exactly.
2. Slice cache (when the encoder has a byte budget, ``use_slice_cache`` is set for the video, it has slice keys,
   and ``profiling`` is off). Exact slices are keyed ``("x", H, W, key)``. Selective outputs are approximate,
   so they never take an exact key: they are cached under ``("stc", H, W, ratio, key, reference key)``; the
   selective output is a function of exactly those (its pixels, its reference's pixels, the grid and the
   ratio), so a hit returns what recomputing would. A selective slice that misses needs its reference's
   per-layer state, so its reference is recomputed even if the reference's output is cached.
   Identical keys within one call are computed once.
3. One tower pass for everything missing, all videos batched: the stock ``visual(pixels, grid)`` when no slice
   is selective (the unmodified call on the unmodified input when nothing is cached either, so outputs are
   bit-identical to vLLM's), otherwise :func:`run_selective_tower` (references and exact slices run the stock
   block computation; selective slices are batched per ``(H, W, ratio)``).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

import torch

from vllm_vtprune.core.stc_cacher import reference_slices

from .cacher_config import CacherConfig
from .selective import SelectiveGroup, _runs, _SplitMemo, run_selective_tower
from .slice_cache import SliceCache

_EMA = 0.3  # weight of the newest full-compute measurement in the seconds-per-token estimate


@dataclass
class EncodeStats:
    """What one ``encode`` call did (for metrics).

    ``seconds_saved_estimate``: ``max(0, s * tokens_total - tower_seconds)``, where ``s`` is the encoder's running
    estimate (exponential average) of tower seconds per patch token measured on calls that computed every slice
    at full cost (no cache hit, no selective slice), and ``tokens_total`` counts the patch tokens of every slice
    requested. It covers both cache hits (0 tower time) and cacher savings. Before any such measurement ``s`` is
    taken from this call, counting selective slices at full cost (so only cache hits count as saved).
    Attention cost grows with tokens per slice, so ``s`` is only exact for slices of the sizes measured.
    """

    tower_seconds: float = 0.0
    slices_total: int = 0
    slices_from_cache: int = 0
    slices_computed: int = 0
    cacher_selective_slices: int = 0
    seconds_saved_estimate: float = 0.0
    tokens_total: int = 0
    tokens_computed: int = 0
    references_recomputed: int = 0  # cached references recomputed because a dependant missed
    tower_calls: int = 0
    slice_cache_bytes: int = 0  # the slice cache's size after the call

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(eq=False)
class _Slice:
    video: int
    t: int
    key: Hashable | None
    kind: str = "cache"  # "cache" (served from the slice cache) | "full" | "sel" | "alias"
    value: torch.Tensor | None = None  # the cached output, for "cache"
    ref: _Slice | None = None  # for "sel": the (computed, non-alias) reference slice
    src: _Slice | None = None  # for "alias": the identical slice of this call that computes it


def _grid_list(grid_thw: torch.Tensor | Sequence[Sequence[int]]) -> list[list[int]]:
    if isinstance(grid_thw, torch.Tensor):
        grid_thw = grid_thw.tolist()
    return [[int(x) for x in g] for g in grid_thw]


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
    ``profiling``: set True during vLLM's memory profiling to bypass the slice cache entirely.
    ``sync_timing``: synchronise the device around the tower call so ``EncodeStats.tower_seconds`` is the real
    tower time (default; costs a pipeline stall per call on CUDA). False: host-side time only.
    """

    def __init__(
        self, visual: torch.nn.Module, *, cache_bytes: int = 0, cache_device: str | torch.device | None = None
    ) -> None:
        self.visual = visual
        self.cache = SliceCache(cache_bytes, device=cache_device)
        self.profiling = False
        self.sync_timing = True
        self._memo = _SplitMemo()
        self._sec_per_token: float | None = None

    @property
    def merge_unit(self) -> int:
        return self.visual.spatial_merge_size**2

    def clear(self) -> None:
        """Drop the slice cache and any memoised split-qkv weights (wire to vLLM's encoder-cache reset, which
        vLLM also calls after ``reload_weights``)."""
        self.cache.clear()
        self._memo.entries.clear()

    def _sync(self) -> None:
        if not self.sync_timing:
            return
        device = self.visual.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type not in ("cpu", "meta") and hasattr(torch, device.type):
            getattr(torch, device.type).synchronize()  # xpu etc.

    # ------------------------------------------------------------------ planning
    def _plan(self, grid, cachers, keys, use_cache, force_selective=False):
        cache_on = self.cache.max_bytes > 0 and not self.profiling
        slices: list[list[_Slice]] = []
        full: list[_Slice] = []  # computed exactly, in discovery order
        groups: dict[Hashable, list[_Slice]] = {}  # (H, W, ratio) -> selective slices computed
        owners: dict[Hashable, _Slice] = {}  # key -> the slice of this call that computes it
        stats = EncodeStats()
        for v, (t_, h_, w_) in enumerate(grid):
            cfg = cachers[v]
            act = (cfg.active or (force_selective and cfg.enabled)) and t_ > 1
            refs = reference_slices(t_, cfg.refresh_interval) if act else list(range(t_))
            kv = None
            if cache_on and use_cache[v] and keys[v] is not None:
                kt = keys[v]
                if tuple(kt.shape) != (t_, 2):
                    raise ValueError(f"slice_keys[{v}] must be [T={t_}, 2], got {tuple(kt.shape)}")
                kv = [tuple(r) for r in kt.tolist()]
            row: list[_Slice] = []
            for t in range(t_):
                key = None
                if kv is not None:
                    key = (
                        ("x", h_, w_, *kv[t])
                        if refs[t] == t
                        else ("stc", h_, w_, cfg.recompute_ratio, *kv[t], *kv[refs[t]])
                    )
                row.append(_Slice(v, t, key, value=self.cache.get(key) if key is not None else None))
            # A selective slice that is computed needs its reference's per-layer state from this call.
            for t in range(t_):
                r = row[refs[t]]
                if refs[t] != t and row[t].value is None and r.value is not None:
                    r.value = None
                    stats.references_recomputed += 1
            for t, s in enumerate(row):
                stats.slices_total += 1
                stats.tokens_total += h_ * w_
                if s.value is not None:
                    stats.slices_from_cache += 1
                    continue
                if s.key is not None and s.key in owners:
                    s.kind, s.src = "alias", owners[s.key]
                    continue
                if s.key is not None:
                    owners[s.key] = s
                if refs[t] == t:
                    s.kind = "full"
                    full.append(s)
                else:
                    r = row[refs[t]]
                    s.kind, s.ref = "sel", (r.src if r.kind == "alias" else r)
                    groups.setdefault((h_, w_, cfg.recompute_ratio), []).append(s)
            slices.append(row)
        return slices, full, groups, stats

    # ------------------------------------------------------------------ encode
    @torch.inference_mode()
    def encode(
        self,
        pixel_values: torch.Tensor,
        grid_thw: torch.Tensor | Sequence[Sequence[int]],
        cachers: Sequence[CacherConfig] | None = None,
        slice_keys: Sequence[torch.Tensor | None] | None = None,
        use_slice_cache: Sequence[bool] | None = None,
        *,
        force_selective: bool = False,
    ) -> tuple[list[torch.Tensor], EncodeStats]:
        """Per-video merger outputs ``[T*H*W/4, out_hidden * (1 + deepstack)]`` and what it took.

        ``pixel_values``: vLLM's ``pixel_values_videos`` for the batch, ``[sum T*H*W, C]``; ``grid_thw``: per
        video ``[T, H, W]`` in patches. ``cachers`` / ``slice_keys`` / ``use_slice_cache``: one per video
        (defaults: cacher off, no keys, no cache). ``force_selective`` (diagnostics/tests): run the selective
        path for enabled cachers even when it is exact by definition (ratio 1).
        """
        grid = _grid_list(grid_thw)
        n = len(grid)
        cachers = (
            [CacherConfig.from_dict(c) for c in cachers] if cachers is not None else [CacherConfig()] * n
        )
        keys = list(slice_keys) if slice_keys is not None else [None] * n
        use_cache = list(use_slice_cache) if use_slice_cache is not None else [False] * n
        for name, seq in (("cachers", cachers), ("slice_keys", keys), ("use_slice_cache", use_cache)):
            if len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} entries for {n} videos")
        rows = [t * h * w for t, h, w in grid]
        if pixel_values.shape[0] != sum(rows):
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} rows, grid_thw needs {sum(rows)}")
        mu = self.merge_unit
        row0 = [0]
        for r in rows:
            row0.append(row0[-1] + r)

        slices, full, groups, stats = self._plan(grid, cachers, keys, use_cache, force_selective)

        def pix_range(s: _Slice) -> tuple[int, int]:
            _, h_, w_ = grid[s.video]
            a = row0[s.video] + s.t * h_ * w_
            return a, a + h_ * w_

        # The computed slices, in (video, t) order: the tower's input and output order.
        computed = [s for row in slices for s in row if s.kind in ("full", "sel")]
        out_row: dict[int, int] = {}  # id(slice) -> first output row
        at = 0
        for s in computed:
            out_row[id(s)] = at
            at += grid[s.video][1] * grid[s.video][2] // mu
        selective = bool(groups)
        out = None
        if computed:
            self._sync()
            t0 = time.perf_counter()
            if len(computed) == stats.slices_total:  # every slice, once, in order: the stock call itself
                px, tower_grid = pixel_values, grid
            else:
                px = _row_ranges_cat(pixel_values, [pix_range(s) for s in computed])
                tower_grid = _runs([tuple(grid[s.video][1:]) for s in computed])
            if not selective:
                out = self.visual(px, grid_thw=tower_grid)
            else:
                in_row = {id(s): out_row[id(s)] * mu for s in computed}
                # Full part order: each group's references in dependency order (so a group's references are
                # usually one contiguous range, read as views), then every other full slice.
                order: list[_Slice] = []
                placed: set[int] = set()
                group_list = list(groups.items())
                for _, members in group_list:
                    for s in members:
                        if id(s.ref) not in placed:
                            placed.add(id(s.ref))
                            order.append(s.ref)
                order += [s for s in full if id(s) not in placed]
                slot_of = {id(s): j for j, s in enumerate(order)}
                plan_groups = [
                    SelectiveGroup(h_, w_, ratio, [slot_of[id(s.ref)] for s in members])
                    for (h_, w_, ratio), members in group_list
                ]
                out = run_selective_tower(
                    self.visual,
                    px,
                    [tuple(grid[s.video][1:]) for s in order],
                    [in_row[id(s)] for s in order],
                    plan_groups,
                    [[in_row[id(s)] for s in members] for _, members in group_list],
                    self._memo,
                )
                stats.cacher_selective_slices = sum(len(m) for m in groups.values())
            self._sync()
            stats.tower_seconds = time.perf_counter() - t0
            stats.tower_calls = 1
        outputs = {
            id(s): (out, out_row[id(s)], out_row[id(s)] + grid[s.video][1] * grid[s.video][2] // mu)
            for s in computed
        }

        # Count computed work, fill the cache with what was computed.
        full_tokens = sum(grid[s.video][1] * grid[s.video][2] for s in full)
        sel_tokens = sum(grid[s.video][1] * grid[s.video][2] for m in groups.values() for s in m)
        stats.slices_computed = len(full) + stats.cacher_selective_slices
        stats.tokens_computed = full_tokens + sel_tokens
        for row in slices:
            for s in row:
                if s.kind in ("full", "sel") and s.key is not None:
                    ten, a, b = outputs[id(s)]
                    self.cache.put(s.key, ten[a:b])

        # Assemble per-video outputs (views where a video's slices are one contiguous range).
        device = self.visual.device
        results: list[torch.Tensor] = []
        for row in slices:
            pieces: list[list] = []
            for s in row:
                if s.kind == "cache":
                    val = s.value if s.value.device == device else s.value.to(device, non_blocking=True)
                    pieces.append([val, 0, val.shape[0]])
                    continue
                ten, a, b = outputs[id(s.src if s.kind == "alias" else s)]
                if pieces and pieces[-1][0] is ten and pieces[-1][2] == a:
                    pieces[-1][2] = b
                else:
                    pieces.append([ten, a, b])
            if not pieces:
                results.append(
                    torch.empty(0, self.visual.out_hidden_size, device=device, dtype=self.visual.dtype)
                )
            elif len(pieces) == 1:
                ten, a, b = pieces[0]
                results.append(ten[a:b] if (a, b) != (0, ten.shape[0]) else ten)
            else:
                results.append(torch.cat([ten[a:b] for ten, a, b in pieces], dim=0))

        # Seconds saved: against the running full-cost seconds-per-token estimate.
        if stats.tokens_computed and not selective:
            spt = stats.tower_seconds / stats.tokens_computed
            self._sec_per_token = (
                spt if self._sec_per_token is None else ((1 - _EMA) * self._sec_per_token + _EMA * spt)
            )
        spt = self._sec_per_token
        if spt is None and stats.tokens_computed:
            spt = stats.tower_seconds / stats.tokens_computed
        if spt is not None:
            stats.seconds_saved_estimate = max(0.0, spt * stats.tokens_total - stats.tower_seconds)
        stats.slice_cache_bytes = self.cache.bytes_used
        return results, stats
