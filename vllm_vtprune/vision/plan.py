"""What the vision tower computes for a batch of videos: pure planning, no tower and no tower outputs.

:func:`plan_encode` (a batch through ``VideoEncoder``), per video and temporal slice, in (video, t) order:

1. Roles. With the cacher active for a video (``CacherConfig.active``: enabled, ratio < 1, interval > 1), slice
   ``t`` is a reference when ``t % refresh_interval == 0`` and otherwise a selective slice whose reference is
   ``t - t % refresh_interval`` (same video, same call). Otherwise every slice is computed exactly.
2. Slice cache (when the encoder's cache is on, the video asks for it and has slice keys). Exact slices are keyed
   ``("x", H, W, key)``. Selective outputs are approximate, so they never take an exact key: they are cached
   under ``("stc", H, W, ratio, key, reference key)``; the selective output is a function of exactly those (its
   pixels, its reference's pixels, the grid and the ratio), so a hit returns what recomputing would. A selective
   slice that misses needs its reference's per-layer state, so its reference is recomputed even if the
   reference's output is cached.
3. Aliases: a slice whose key another slice of the call computes is computed once and its rows reused.

:func:`selective_layout` arranges the computed slices for the selective tower; :func:`plan_subset` plans the
tower on a pre-tower stage's kept groups (``subset_tower``).
"""

from __future__ import annotations

from collections.abc import Container, Hashable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch

from vllm_vtprune.core.stc_cacher import reference_slices

from .cacher_config import CacherConfig

Grid = tuple[int, int, int]


class Role(Enum):
    CACHED = "cached"  # served from the slice cache
    FULL = "full"  # computed by the stock block computation (a reference, or a slice computed exactly)
    SELECTIVE = "selective"  # computed by STC-Cacher's selective recomputation against its reference
    ALIAS = "alias"  # the same key as a slice of this call that computes it: its rows are reused


@dataclass(frozen=True)
class PlannedSlice:
    video: int
    t: int
    height: int
    width: int
    key: Hashable | None  # slice-cache key; None when the cache is not used for this video
    role: Role
    # SELECTIVE: the index (in ``EncodePlan.slices``) of its computed reference; ALIAS: of the slice computing it.
    source: int | None = None

    @property
    def patches(self) -> int:
        return self.height * self.width

    @property
    def computed(self) -> bool:
        return self.role in (Role.FULL, Role.SELECTIVE)


@dataclass(frozen=True)
class SelectiveGroup:
    """Selective slices of one ``(H, W)`` and ratio, run batched as ``[G, H*W, C]`` by the selective tower.

    ``ref_slots[i]``: position of member ``i``'s reference in the tower's full part (``SelectiveLayout.full``).
    """

    height: int
    width: int
    ratio: float
    ref_slots: list[int]

    @property
    def num_tokens(self) -> int:
        return self.height * self.width

    @property
    def num_slices(self) -> int:
        return len(self.ref_slots)


@dataclass(frozen=True)
class SelectiveLayout:
    """Computed slices (indices into ``EncodePlan.slices``) as the selective tower lays them out: ``full`` the
    slices of its full part, each group's references first in dependency order (so a group's references are
    usually one contiguous range, read as views), then every other full slice; ``groups[i]`` the members of
    ``SelectiveGroup`` ``i``."""

    full: list[int]
    groups: list[tuple[SelectiveGroup, list[int]]]


@dataclass
class EncodePlan:
    """Every requested slice, in (video, t) order (the order of the per-video outputs), with its role."""

    grid: list[Grid]
    slices: list[PlannedSlice]
    groups: dict[tuple[int, int, float], list[int]] = field(default_factory=dict)  # (H, W, ratio) -> SELECTIVE
    references_recomputed: int = 0  # cached references recomputed because a dependant missed

    @property
    def computed(self) -> list[int]:
        """The computed slices, in (video, t) order: the tower's input and output order."""
        return [i for i, s in enumerate(self.slices) if s.computed]

    def count(self, role: Role) -> int:
        return sum(s.role is role for s in self.slices)

    @property
    def tokens_total(self) -> int:
        return sum(s.patches for s in self.slices)

    @property
    def tokens_computed(self) -> int:
        return sum(s.patches for s in self.slices if s.computed)


def _cache_keys(keys: torch.Tensor, grid: Grid, refs: list[int], ratio: float, v: int) -> list[tuple]:
    t_, h_, w_ = grid
    if tuple(keys.shape) != (t_, 2):
        raise ValueError(f"slice_keys[{v}] must be [T={t_}, 2], got {tuple(keys.shape)}")
    kv = [tuple(r) for r in keys.tolist()]
    return [("x", h_, w_, *kv[t]) if refs[t] == t else ("stc", h_, w_, ratio, *kv[t], *kv[refs[t]])
            for t in range(t_)]


def plan_encode(
    grid: Sequence[Grid],
    cachers: Sequence[CacherConfig],
    slice_keys: Sequence[torch.Tensor | None],
    use_cache: Sequence[bool],
    cached: Container[Hashable] | None,
    *,
    force_selective: bool = False,
) -> EncodePlan:
    """The roles of every slice of a batch (see the module docstring); one entry per video in each sequence.

    ``cached``: the slice cache's keys (``key in cached``), or None when the cache is off. ``force_selective``
    (diagnostics): run enabled cachers selectively even when they are exact by definition (ratio 1).
    """
    plan = EncodePlan([tuple(g) for g in grid], [])
    owners: dict[Hashable, int] = {}  # key -> index of the slice of this call that computes it
    for v, (t_, h_, w_) in enumerate(plan.grid):
        cfg = cachers[v]
        active = (cfg.active or (force_selective and cfg.enabled)) and t_ > 1
        refs = reference_slices(t_, cfg.refresh_interval) if active else list(range(t_))
        keys: list[Hashable | None] = [None] * t_
        if cached is not None and use_cache[v] and slice_keys[v] is not None:
            keys = _cache_keys(slice_keys[v], (t_, h_, w_), refs, cfg.recompute_ratio, v)
        hit = [key is not None and key in cached for key in keys]
        for t in range(t_):  # a selective slice that is computed needs its reference's per-layer state
            if refs[t] != t and not hit[t] and hit[refs[t]]:
                hit[refs[t]] = False
                plan.references_recomputed += 1
        first = len(plan.slices)  # index of this video's slice 0
        for t, key in enumerate(keys):
            role, source = Role.CACHED, None
            if hit[t]:
                pass
            elif key is not None and key in owners:
                role, source = Role.ALIAS, owners[key]
            else:
                if key is not None:
                    owners[key] = first + t
                if refs[t] == t:
                    role = Role.FULL
                else:
                    ref = plan.slices[first + refs[t]]
                    role, source = Role.SELECTIVE, (ref.source if ref.role is Role.ALIAS else first + refs[t])
                    plan.groups.setdefault((h_, w_, cfg.recompute_ratio), []).append(first + t)
            plan.slices.append(PlannedSlice(v, t, h_, w_, key, role, source))
    return plan


def selective_layout(plan: EncodePlan) -> SelectiveLayout:
    """The selective tower's arrangement of ``plan``'s computed slices (see ``SelectiveLayout``)."""
    full: list[int] = []
    slot: dict[int, int] = {}  # slice index -> position in ``full``
    for members in plan.groups.values():
        for i in members:
            ref = plan.slices[i].source
            if ref not in slot:
                slot[ref] = len(full)
                full.append(ref)
    for i, s in enumerate(plan.slices):
        if s.role is Role.FULL and i not in slot:
            slot[i] = len(full)
            full.append(i)
    groups = [(SelectiveGroup(h_, w_, ratio, [slot[plan.slices[i].source] for i in members]), members)
              for (h_, w_, ratio), members in plan.groups.items()]
    return SelectiveLayout(full, groups)


def grid_runs(hw: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Run-length grid ``[[n, H, W], ...]`` for consecutive slices of equal ``(H, W)``."""
    runs: list[list[int]] = []
    for h, w in hw:
        if runs and runs[-1][1] == h and runs[-1][2] == w:
            runs[-1][0] += 1
        else:
            runs.append([1, h, w])
    return runs


@dataclass(frozen=True)
class SubsetPlan:
    """The tower on a pre-tower stage's kept groups (``subset_tower.run_subset_tower``).

    ``table_rows``: per computed patch, its row in the batch's one-slice position tables (video after video,
    ``Hp*Wp`` rows each); ``seq_lens``: patches of each attention sequence (a computed slice's kept patches);
    ``out_rows``: per kept group, in ``kept`` order, its row of the tower output (None: the output order itself,
    when no slice is a copy).
    """

    table_rows: torch.Tensor
    seq_lens: list[int]
    out_rows: torch.Tensor | None


def _slice_starts(counts: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(counts, 0) - counts


def plan_subset(
    grids: Sequence[Sequence[int]],
    kept: Sequence[torch.Tensor],
    slice_source: Sequence[torch.Tensor | None],
    unit: int,
    device: torch.device,
) -> SubsetPlan:
    """Which patches the subset tower computes and where each kept group's row comes from.

    grids: per video (T, Hp, Wp) in patches; kept: per video, int64 ascending kept group indices ``t*H*W + g`` on
    the post-merger grid; slice_source: per video, int64 [T] (-1: computed; s: a copy of slice s) or None;
    unit: patches per merge group.
    """
    table_rows, seq_lens, out_rows = [], [], []
    table_offset = computed_offset = 0
    any_copy = False
    for (t, hp, wp), groups, source in zip(grids, kept, slice_source):
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
    return SubsetPlan(torch.cat(table_rows).reshape(-1), seq_lens, torch.cat(out_rows) if any_copy else None)
