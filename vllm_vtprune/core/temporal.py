"""Temporal stages for MSSAVT: StreamingAssistant's unnamed "existing temporal-redundancy pruning method".

The paper does not name it, so it is pluggable. Every stage runs in budget mode, because vLLM
needs the token count before the vision tower runs: it drops ``target`` tokens (fewer only if the referenced slices
cannot give more while keeping ``floor`` tokens each), choosing the tokens most similar (cosine) to a reference
slice at the same spatial position.

- ``dtd``: TimeChat-Online's Differential Token Drop (``yaolinli/TimeChat-Online`` @ 25a1578, ``token_drop``,
  feature mode) in relative mode. Reference: the full, unpruned previous slice. Slice 0 is exempt unless the stream
  state provides the previous chunk's last slice. The official relative mode drops ``floor(tau * N)`` tokens of
  every frame; here ``target`` is split evenly over the referenced slices (exact largest remainder, earlier slices
  first), i.e. ``tau = target / (N * referenced slices)``.
- ``evs``: dtd's references, but one global top-``target`` over all referenced slices (vLLM EVS's global sort), so
  slices that changed less lose more; capped at ``H*W - floor`` per slice.
- ``dycoke``: DyCoke's TTM (``KD-TAO/DyCoke``, ``llava_arch.py::dycole_ttm``) windows of 4 slices
  (i, i+1, i+2, i+3): i is kept whole, i+1 and i+2 are compared with i, i+3 with i+2; ``target`` is split evenly
  over the non-anchor slices (DyCoke drops a fixed fraction of each). Windows restart at every call. The official
  pair loop's similarity index ``(i-2)//2`` is off by one (it compares with the wrong frame); the windows above are
  the described intent.
- ``none``: no temporal stage.

Partial grid (second stage after a pre-tower stage): a token whose reference position was not computed by the
tower (pruned before it) has no reference and is treated as not similar, i.e. never dropped; a slice's room is
what it can lose while keeping ``min(floor, n_t)`` of its ``n_t`` tokens present.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .budget import split_by_room
from .ranking import top_k_mask

STAGES_WITH_STATE = ("dtd", "evs")  # stages whose slice 0 can reference the previous chunk's last slice
_DYCOKE_STEPS_BACK = (0, 1, 2, 1)  # slices back to the reference at each window position; 0 = window anchor


def reference_offsets(stage: str, t: int) -> list[int]:
    """For each of ``t`` slices, how many slices back its reference lies within the call (0: none)."""
    if stage == "dycoke":
        return [_DYCOKE_STEPS_BACK[s % 4] for s in range(t)]
    if stage in STAGES_WITH_STATE:
        return [0] + [1] * (t - 1)
    return [0] * t


def temporal_drop(
    stage: str,
    cosine_back: Mapping[int, torch.Tensor],
    grid_t: int,
    hw: int,
    target: int,
    floor: int,
    first_slice_cosine: torch.Tensor | None,
    device: torch.device,
    valid: torch.Tensor | None = None,
    first_slice_reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tokens dropped by the temporal stage: bool [T, HW], at most ``target`` True, ``floor`` kept per slice.

    cosine_back: for each offset d in ``reference_offsets``, [T - d, HW] cosines of slice s + d with slice s at
        the same position.
    first_slice_cosine: [HW] cosines of slice 0 with the previous chunk's last slice (stream state), used by
        ``dtd`` and ``evs``.
    valid: bool [T, HW], the tokens present on a partial grid (None: all); a slice keeps ``min(floor, n_t)``.
    first_slice_reference: bool [HW], the positions present in the previous chunk's last slice (None: all).
    """
    offsets = reference_offsets(stage, grid_t)
    has_reference = any(offsets) or (first_slice_cosine is not None and stage in STAGES_WITH_STATE)
    if target <= 0 or not has_reference:
        return torch.zeros(grid_t, hw, dtype=torch.bool, device=device)
    similarity = torch.zeros(grid_t, hw, device=device)
    for steps in sorted(set(offsets) - {0}):  # at most two offsets (DyCoke), each a single indexed copy
        slices = torch.tensor([s for s in range(grid_t) if offsets[s] == steps], device=device)
        similarity[slices] = cosine_back[steps][slices - steps]
    referenced = [offset > 0 for offset in offsets]
    uses_state = first_slice_cosine is not None and stage in STAGES_WITH_STATE
    if uses_state:
        similarity[0] = first_slice_cosine
        referenced[0] = True
    referenced = torch.tensor(referenced, device=device).long()
    room = referenced * (hw - floor)
    droppable = None
    if valid is not None or (uses_state and first_slice_reference is not None):
        droppable = _droppable(offsets, valid, uses_state, first_slice_reference, hw, device)
        counts = torch.full((grid_t,), hw, device=device) if valid is None else valid.sum(1)
        room = referenced * (counts - counts.clamp_max(floor)).minimum(droppable.sum(1))
    target = min(target, int(room.sum()))
    if stage == "evs":
        capped = top_k_mask(similarity, room, eligible=droppable)  # the most similar tokens each slice may lose
        return top_k_mask(similarity.flatten(), target, eligible=capped.flatten()).view(grid_t, hw)
    return top_k_mask(similarity, split_by_room(room, target), eligible=droppable)


def _droppable(
    offsets: list[int],
    valid: torch.Tensor | None,
    uses_state: bool,
    first_slice_reference: torch.Tensor | None,
    hw: int,
    device: torch.device,
) -> torch.Tensor:
    """bool [T, HW]: tokens present whose reference position is present (a token without one is not similar)."""
    grid_t = len(offsets)
    present = torch.ones(grid_t, hw, dtype=torch.bool, device=device) if valid is None else valid
    steps = torch.tensor(offsets, device=device)
    reference = present[(torch.arange(grid_t, device=device) - steps).clamp_min(0)] & (steps > 0).unsqueeze(1)
    if uses_state:  # slice 0 against the previous chunk's last slice
        reference[0] = True if first_slice_reference is None else first_slice_reference.to(device)
    return present & reference
