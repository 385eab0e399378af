"""Deterministic per-row ranking and top-k masks.

``torch.topk`` leaves the order of exact ties unspecified (and it differs between CPU and CUDA), so every selection
here ranks with a stable argsort: among equal scores the lower index wins. A per-row top-k with a different k per
row is then ``rank < k_row``, which batches all slices of a video into one sort.
"""

from __future__ import annotations

import torch


def stable_order(scores: torch.Tensor, *, descending: bool, eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Permutation sorting each row of ``scores``: eligible entries first, then by score, then by index."""
    order = torch.argsort(scores, dim=-1, descending=descending, stable=True)
    if eligible is not None:
        ineligible = (~eligible).gather(-1, order).to(torch.uint8)
        order = order.gather(-1, torch.argsort(ineligible, dim=-1, stable=True))
    return order


def ranks_from_order(order: torch.Tensor) -> torch.Tensor:
    """Inverse permutation: ``rank[order[j]] = j`` along the last dimension."""
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def top_k_mask(
    scores: torch.Tensor,
    k: int | torch.Tensor,
    *,
    largest: bool = True,
    eligible: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean mask of the ``k`` best entries of each row (``k`` an int or one count per row).

    Only ``eligible`` entries are chosen, so a row gets ``min(k, number eligible)``; ties go to the lower index.
    """
    rank = ranks_from_order(stable_order(scores, descending=largest, eligible=eligible))
    k = torch.as_tensor(k, device=scores.device)
    mask = rank < (k.unsqueeze(-1) if k.ndim else k)
    return mask if eligible is None else mask & eligible
