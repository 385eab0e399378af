"""``vcast``: V-CAST, curvature-guided temporal allocation plus dual-anchor spatial selection (arXiv 2603.27650).

Follows the official Qwen3-VL code (``xinyouu/V-CAST`` @ c235ef3, ``compressor/v_cast/modeling_qwen3_vl_v_cast.py``):

1. Trajectory: ``r_t = normalize(mean_p x[t, p])`` (eps 1e-6).
2. Curvature: ``kappa_t = 1 - cos(r_t - r_{t-1}, r_{t+1} - r_t)`` (eps 1e-6) for interior slices, 1 at both ends.
3. Weights ``softmax(kappa / tau)``, tau = 0.7 (option ``temperature``).
4. Budget ``B = max(T * min_k, clip(round(T*H*W*R), 1, T*H*W))``, ``round`` being Python's (half to even), as
   ``int(round(...))`` in the official code.
5. Per-slice counts: ``budget.allocate_like_vcast`` (floor ``min_k``, capacity H*W; the official leftover rule).
6. Score ``(1 - cos(x[t, p], r_t)) + (|x[t, p]| - min_q |x[t, q]|) / (max_q |x[t, q]| - min_q |x[t, q]| + 1e-6)``;
   keep the top ``k_t`` of each slice, in raster order.

Differences from the official code: everything is vectorised over slices (the official code loops over frames
and its allocator loops on the host); scores are fp32 throughout (the official frame means are taken in the
input dtype); exact ties go to the lower index (the official ``topk(sorted=False)`` leaves them unspecified);
``min_tokens_per_slice > H*W`` is an error (the official code silently lowers ``min_k`` to H*W). As in the
official code, videos with T <= 1 are not pruned: their budget is all H*W tokens.

Partial grid (second stage after a pre-tower stage; ``valid`` [T, H*W], ``n_t`` groups present in slice t):
the trajectory is the mean over the groups present of each slice; the curvature and weights are unchanged; the
allocator caps slice t at ``n_t`` (floor ``min(min_k, n_t)``, the shares of full slices flow through the official
leftover rule); the min-max of the activation term runs over the groups present; the top ``k_t`` is taken among
them. A slice with no group present has a zero trajectory point (its curvature terms use the eps above). A
budget covering every group present keeps them all (the T <= 1 rule above is this case on a full grid); a
smaller one is allocated and ranked whatever T, since the two-stage budget ``B2`` does not exempt T <= 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .budget import allocate_like_vcast, ratio_budget
from .options import MethodOptions, option_error
from .ranking import top_k_mask
from .registry import PruningMethod, register_method
from .similarity import group_anchor_dots, group_weighted_sums, row_norms

if TYPE_CHECKING:
    from .budget import Grid
    from .config import PruneConfig
    from .state import StreamState

EPS = 1e-6  # the official code's eps for normalize, cosine and the min-max norm


@dataclass(frozen=True)
class VCastOptions(MethodOptions):
    temperature: float = 0.7  # softmax temperature of the curvature weights

    def validate(self) -> None:
        if self.temperature <= 0:
            raise option_error("temperature", f"must be > 0, got {self.temperature}")


def curvature(trajectory: torch.Tensor) -> torch.Tensor:
    """Turning angle ``1 - cos(v_in, v_out)`` of a [T, C] trajectory at each slice; 1 at the ends (and for T <= 2)."""
    kappa = torch.ones(trajectory.shape[0], dtype=torch.float32, device=trajectory.device)
    if trajectory.shape[0] > 2:
        v_in = trajectory[1:-1] - trajectory[:-2]
        v_out = trajectory[2:] - trajectory[1:-1]
        kappa[1:-1] = 1.0 - torch.nn.functional.cosine_similarity(v_in, v_out, dim=-1, eps=EPS)
    return kappa


def dual_anchor_scores(x: torch.Tensor, trajectory: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Contextual-diversity plus feature-activation score of each token: x [T, HW, C], trajectory [T, C] -> [T, HW].

    valid: bool [T, HW], the tokens present; the activation term's min-max runs over them (scores elsewhere are
    meaningless)."""
    t, hw, _ = x.shape
    flat = x.view(t * hw, -1)
    norms = row_norms(flat).view(t, hw)
    dots = group_anchor_dots(flat, hw, trajectory.unsqueeze(1)).view(t, hw)
    cos = dots / (norms.clamp_min(EPS) * trajectory.norm(dim=-1, keepdim=True).clamp_min(EPS))
    if valid is None:
        low = norms.min(dim=1, keepdim=True).values
        high = norms.max(dim=1, keepdim=True).values
    else:
        present = valid.any(1, keepdim=True)  # an empty slice gets 0 and 0, not inf and -inf
        low = torch.where(valid, norms, float("inf")).amin(1, keepdim=True).where(present, 0.0)
        high = torch.where(valid, norms, float("-inf")).amax(1, keepdim=True).where(present, 0.0)
    return (1.0 - cos) + (norms - low) / (high - low + EPS)


@register_method
class VCast(PruningMethod):
    name = "vcast"
    Options = VCastOptions
    partial_grid = True

    @classmethod
    def total_budget(cls, grid: Grid, cfg: PruneConfig) -> int:
        t, h, w = grid
        if t <= 1:
            return h * w
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
    ) -> tuple[torch.Tensor, None]:
        t, hw, _ = x.shape
        counts = torch.full((t,), hw, device=x.device) if valid is None else valid.sum(1)
        if budget >= int(counts.sum()):  # everything present: no allocation to make (T <= 1 on a full grid)
            return (torch.ones(t, hw, dtype=torch.bool, device=x.device) if valid is None else valid.clone()), None
        means = group_weighted_sums(x.view(t * hw, -1), hw) / hw
        if valid is not None:  # x is zero at absent tokens; hw / n_t is exactly 1 for a full slice
            means = means * (hw / counts.clamp_min(1)).unsqueeze(1)
        trajectory = torch.nn.functional.normalize(means, dim=-1, eps=EPS)
        weights = torch.softmax(curvature(trajectory) / cls.options(cfg).temperature, dim=0)
        per_slice = allocate_like_vcast(weights, budget, min_k=cfg.min_tokens_per_slice, capacity=counts)
        return top_k_mask(dual_anchor_scores(x, trajectory, valid), per_slice, eligible=valid), None
