"""``mssavt``: StreamingAssistant's spatial pruning (MSSAVT + masked pruning) plus a temporal stage.

StreamingAssistant (arXiv 2512.12560) has no public code; this reconstructs it from the paper's text.
Confirmed by the paper: MSSAVT, the maximum cosine similarity of a token to its spatially adjacent
tokens of the same frame, scores spatial redundancy; masked pruning prunes only mutually non-adjacent tokens in
one go; an existing temporal pruner removes temporal redundancy. Everything else below is a documented choice.

MSSAVT: ``max`` of the cosine to the 4-neighbours (up, down, left, right; no diagonals; neighbours outside the
grid ignored) on the post-merger grid, whose (h, w) are the LLM's M-RoPE coordinates.

Masked pruning, in rounds (each round batched over all slices):

- ``mask="checkerboard"`` (default): round r prunes, in each slice, the highest-scoring tokens of one colour of
  the checkerboard, ``(h + w + parity + r [+ t if alternate_parity]) % 2 == 0``, up to the slice's need. Tokens
  of one colour are never 4-adjacent.
- ``mask="greedy"``: round r takes tokens in descending score order and prunes one unless a 4-neighbour was
  already pruned in this round (greedy maximal independent set; a loop over positions, vectorised over slices).
- One round can prune about half of a slice. More rounds run only when the budget needs more. A token's score in
  a round is its max cosine to the 4-neighbours still alive (not pruned by the temporal stage or by an earlier
  round), so a pruned token's most similar surviving neighbour is never pruned in the same round (the paper's
  point: pruning A is safe because its look-alike B survives). The neighbour cosines are computed once; rounds
  only re-mask them, so a round costs O(T*H*W), not O(T*H*W*C).
- Tokens whose 4-neighbours are all pruned are not candidates (nothing nearby carries their content). Only if a
  slice still needs tokens and two consecutive rounds found no candidate there (every survivor isolated), it
  falls back to pruning survivors by their full-grid MSSAVT, still one colour / independent set per round.

Stage order: temporal first, then spatial on the temporal survivors. The spatial guarantee (a pruned token's
similar neighbour survives) is then checked against the tokens that remain; spatial first would let the temporal
stage remove the neighbour that justified a spatial prune. The temporal stage compares with the full unpruned
previous slice, as DTD does, so it does not depend on the spatial stage.

Budget (must be known before the vision tower): total ``B = max(T*min_k, clip(round(T*H*W*R), 1, T*H*W))``
(Python round). Of the ``P = T*H*W - B`` tokens to prune, the temporal stage takes ``round(temporal_share * P)``
(default 0.5: an even split; the paper fixes none), or as many as its referenced slices can give while keeping
``min_k`` each; the spatial stage prunes the rest, split over slices in proportion to each slice's survivors above
``min_k`` (exact largest remainder), so every slice loses the same fraction of what it can lose. The per-slice
split thus depends on the features, the total never does. A caller's budget below ``T*min_k`` drops the floor
(every slice may then lose all its tokens; before, such a budget could stop the rounds from converging).

Stream state: the ``dtd`` and ``evs`` stages use the previous chunk's last slice as slice 0's reference.

Partial grid (second stage after a pre-tower stage; ``valid`` [T, H*W], ``n_t`` tokens present in slice t): the
tokens absent are never alive: the spatial rounds start from ``alive = valid`` minus the temporal drops, and a
neighbour that is absent is no neighbour (not in MSSAVT, not in the fallback's full-grid MSSAVT). The temporal
stage treats a token whose reference position is absent as not similar (``temporal.py``). Floors are
``min(min_k, n_t)``; the spatial split stays proportional to each slice's survivors above its floor. The stream
state keeps the last slice dense (zero where absent) with ``last_slice_valid``, the positions present, so that the
next chunk's slice 0 only compares with computed features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from .budget import ratio_budget, slice_floors, split_by_room
from .options import MethodOptions, option_error
from .ranking import stable_order, top_k_mask
from .registry import PruningMethod, register_method
from .similarity import row_norms, rows_cosine, shifted_row_cosines
from .state import StreamState
from .temporal import STAGES_WITH_STATE, reference_offsets, temporal_drop

if TYPE_CHECKING:
    from .budget import Grid
    from .config import PruneConfig

logger = logging.getLogger(__name__)

_ROUNDS_WITHOUT_CANDIDATES = 2  # after this many empty rounds in a row a slice uses the fallback ranking


@dataclass(frozen=True)
class MssavtOptions(MethodOptions):
    mask: Literal["checkerboard", "greedy"] = "checkerboard"
    parity: Literal[0, 1] = 0  # checkerboard colour pruned in the first round: (h + w) % 2 == parity
    alternate_parity: bool = False  # flip the first colour from one slice to the next
    temporal: Literal["dtd", "dycoke", "evs", "none"] = "dtd"
    temporal_share: float = 0.5  # fraction of the pruned tokens assigned to the temporal stage

    COSTLY = {"mask": ("greedy",)}  # a Python loop per round, where the checkerboard is one tensor op

    def validate(self) -> None:
        if not 0.0 <= self.temporal_share <= 1.0:
            raise option_error("temporal_share", f"must be in [0, 1], got {self.temporal_share}")


@dataclass
class MssavtTrace:
    """What each stage pruned, for tests and debugging.

    temporal: bool [T, HW], dropped by the temporal stage.
    rounds: one bool [T, HW] per spatial round, the tokens pruned in that round.
    fallback: one bool [T] per spatial round, the slices that used the fallback ranking in that round.
    keep: bool [T, HW], the final keep mask.
    """

    temporal: torch.Tensor
    rounds: list[torch.Tensor]
    fallback: list[torch.Tensor]
    keep: torch.Tensor


def _neighbour_values(m: torch.Tensor, fill: float | bool) -> torch.Tensor:
    """Value of ``m`` [T, H, W] at each cell's (up, down, left, right) neighbour -> [T, H, W, 4]."""
    out = torch.full((*m.shape, 4), fill, dtype=m.dtype, device=m.device)
    out[:, 1:, :, 0] = m[:, :-1]
    out[:, :-1, :, 1] = m[:, 1:]
    out[:, :, 1:, 2] = m[:, :, :-1]
    out[:, :, :-1, 3] = m[:, :, 1:]
    return out


def neighbour_cosines(right: torch.Tensor, below: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Cosine of each token with its (up, down, left, right) neighbour: [T, H, W, 4], -inf outside the grid.

    right, below: flat cosines of token i with token i + 1 and i + W (``shifted_row_cosines`` with shifts 1, W).
    """
    t, h, w = grid

    def on_grid(flat: torch.Tensor) -> torch.Tensor:  # pad to T*H*W with -inf and reshape
        out = torch.full((t * h * w,), float("-inf"), device=flat.device)
        out[: flat.shape[0]] = flat
        return out.view(t, h, w)

    right, below = on_grid(right), on_grid(below)
    right[:, :, -1] = float("-inf")  # the next row's first token is not a neighbour
    below[:, -1] = float("-inf")  # the next slice's first row is not a neighbour
    out = torch.full((t, h, w, 4), float("-inf"), device=right.device)
    out[:, 1:, :, 0] = below[:, :-1]
    out[..., 1] = below
    out[:, :, 1:, 2] = right[:, :, :-1]
    out[..., 3] = right
    return out


def _neighbour_index(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Raster index of each position's 4 neighbours [H*W, 4]; H*W (a spare column) where outside the grid."""
    index = torch.arange(h * w, device=device).view(1, h, w)
    return _neighbour_values(index, h * w).view(h * w, 4)


def _greedy_independent_set(
    score: torch.Tensor, candidates: torch.Tensor, need: torch.Tensor, neighbours: torch.Tensor
) -> torch.Tensor:
    """Per slice, take candidates by descending score (ties: lower index) unless a 4-neighbour was taken, up to
    ``need``. Loops over rank positions, vectorised over slices; only used with ``mask="greedy"``."""
    t, hw = score.shape
    order = stable_order(score, descending=True, eligible=candidates)
    rows = torch.arange(t, device=score.device)
    taken = torch.zeros(t, hw + 1, dtype=torch.bool, device=score.device)
    blocked = torch.zeros_like(taken)
    count = torch.zeros(t, dtype=torch.long, device=score.device)
    for position in range(int(candidates.sum(1).max())):
        index = order[:, position]
        take = candidates[rows, index] & ~blocked[rows, index] & (count < need)
        taken[rows, index] = take
        count += take
        blocked[rows[:, None], neighbours[index]] |= take[:, None]
    return taken[:, :hw]


def _spatial_rounds(
    cosines: torch.Tensor, alive: torch.Tensor, need: torch.Tensor, opts: MssavtOptions
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Masked pruning rounds until every slice has pruned its ``need``; updates ``alive`` [T, HW] in place."""
    t, h, w, _ = cosines.shape
    device = cosines.device
    full_grid_score = cosines.amax(-1).view(t, h * w)
    colour = ((torch.arange(h, device=device)[:, None] + torch.arange(w, device=device)) % 2).view(1, h * w)
    first_colour = (opts.parity + torch.arange(t, device=device) * int(opts.alternate_parity)) % 2
    neighbours = _neighbour_index(h, w, device)
    rounds_without_candidates = torch.zeros(t, dtype=torch.long, device=device)
    rounds, fallbacks = [], []
    need = need.clone()
    max_rounds = 4 * (h * w + 1)  # a slice with need > 0 prunes at least one token every 4 rounds
    while bool((need > 0).any()):
        if len(rounds) >= max_rounds:
            raise RuntimeError(f"MSSAVT masked pruning did not converge in {max_rounds} rounds")
        alive_neighbour = _neighbour_values(alive.view(t, h, w), False)
        live_score = torch.where(alive_neighbour, cosines, float("-inf")).amax(-1).view(t, h * w)
        fallback = rounds_without_candidates >= _ROUNDS_WITHOUT_CANDIDATES
        score = torch.where(fallback[:, None], full_grid_score, live_score)
        candidates = alive & (alive_neighbour.any(-1).view(t, h * w) | fallback[:, None])
        if opts.mask == "checkerboard":
            candidates &= colour == ((first_colour + len(rounds)) % 2)[:, None]
            pruned = top_k_mask(score, need, eligible=candidates)
        else:
            pruned = _greedy_independent_set(score, candidates, need, neighbours)
        count = pruned.sum(1)
        alive &= ~pruned
        need -= count
        rounds_without_candidates = torch.where(count > 0, 0, rounds_without_candidates + 1)
        rounds.append(pruned)
        fallbacks.append(fallback)
    return rounds, fallbacks


def _previous_slice(
    state: StreamState | None, x: torch.Tensor, grid: Grid
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The previous chunk's last slice [H*W, C] fp32 and its positions present [H*W] (None: all), if usable."""
    if state is None or state.last_slice is None:
        return None, None
    _, h, w = grid
    if tuple(state.last_slice.shape) != (h, w, x.shape[-1]):
        logger.debug(
            "MSSAVT: previous slice %s does not match grid %s x %d channels; slice 0 has no temporal reference",
            tuple(state.last_slice.shape),
            grid,
            x.shape[-1],
        )
        return None, None
    present = None if state.last_slice_valid is None else state.last_slice_valid.to(x.device).view(h * w)
    return state.last_slice.to(x.device, torch.float32).view(h * w, -1), present


def trace_selection(
    x: torch.Tensor,
    grid: Grid,
    budget: int,
    cfg: PruneConfig,
    state: StreamState | None = None,
    valid: torch.Tensor | None = None,
) -> MssavtTrace:
    """Run MSSAVT on features ``x`` [T, H*W, C] (zero outside ``valid`` [T, H*W], if given) and return what every
    stage pruned."""
    opts: MssavtOptions = MssavtPruner.options(cfg)
    t, h, w = grid
    hw = h * w
    present = torch.ones(t, hw, dtype=torch.bool, device=x.device) if valid is None else valid
    to_prune = (t * hw if valid is None else int(valid.sum())) - budget
    if to_prune == 0:
        keep = present.clone()
        return MssavtTrace(temporal=torch.zeros_like(keep), rounds=[], fallback=[], keep=keep)
    flat = x.view(t * hw, -1)
    norms = row_norms(flat)
    floors = slice_floors(present.sum(1), min(cfg.min_tokens_per_slice, hw), budget)
    floor = int(floors.max())  # min(min_k, H*W), or 0 when the budget cannot cover every slice's floor
    # One blocked pass for the spatial neighbours (shifts 1 and W) and the temporal references (d slices back).
    steps_back = sorted(set(reference_offsets(opts.temporal, t)) - {0})
    right, below, *back = shifted_row_cosines(flat, [1, w] + [d * hw for d in steps_back], norms)
    cosine_back = {d: cos.view(t - d, hw) for d, cos in zip(steps_back, back)}
    previous, previous_present = _previous_slice(state, x, grid) if opts.temporal in STAGES_WITH_STATE else (None, None)
    first_slice_cosine = None if previous is None else rows_cosine(x[0], previous, norms[:hw])
    temporal_target = round(opts.temporal_share * to_prune)
    dropped = temporal_drop(
        opts.temporal,
        cosine_back,
        t,
        hw,
        temporal_target,
        floor,
        first_slice_cosine,
        x.device,
        valid=valid,
        first_slice_reference=previous_present,
    )
    alive = present & ~dropped
    need = split_by_room(alive.sum(1) - floors, to_prune - dropped.sum())
    cosines = neighbour_cosines(right, below, grid)
    if valid is not None:  # an absent token is no neighbour
        cosines = torch.where(_neighbour_values(valid.view(t, h, w), False), cosines, float("-inf"))
    rounds, fallbacks = _spatial_rounds(cosines, alive, need, opts)
    return MssavtTrace(temporal=dropped, rounds=rounds, fallback=fallbacks, keep=alive)


@register_method
class MssavtPruner(PruningMethod):
    name = "mssavt"
    Options = MssavtOptions
    partial_grid = True

    @classmethod
    def uses_stream_state(cls, cfg: PruneConfig) -> bool:
        return cls.options(cfg).temporal in STAGES_WITH_STATE

    @classmethod
    def total_budget(cls, grid: Grid, cfg: PruneConfig) -> int:
        t, h, w = grid
        return max(t * cfg.min_tokens_per_slice, ratio_budget(t * h * w, cfg.retention))

    @classmethod
    def select(
        cls,
        x: torch.Tensor,
        grid: Grid,
        budget: int,
        cfg: PruneConfig,
        state: StreamState | None,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, StreamState | None]:
        keep = trace_selection(x, grid, budget, cfg, state, valid).keep
        if not cls.uses_stream_state(cfg):
            return keep, None
        _, h, w = grid
        last = x[-1].clone().view(h, w, -1)  # the features' own dtype: fp32 at use, same values
        last_valid = None if valid is None else valid[-1].clone().view(h, w)
        return keep, StreamState(method=cls.name, last_slice=last, last_slice_valid=last_valid)
