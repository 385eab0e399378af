"""V-CAST on hand-computed toys: curvature, softmax weights, allocation, dual-anchor scores."""

from __future__ import annotations

import math

import torch

from vllm_vtprune.core import PruneConfig, select_tokens
from vllm_vtprune.core.budget import allocate_like_vcast
from vllm_vtprune.core.vcast import curvature, dual_anchor_scores

# Five slices whose mean directions are unit vectors: e1, e2, e1, e3, e2.
E1, E2, E3 = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
TRAJECTORY = [E1, E2, E1, E3, E2]
SCALES = [1.0, 2.0, 4.0, 3.0]  # the 4 tokens of a slice are its direction times these


def _toy_features() -> torch.Tensor:
    return torch.tensor([[s * c for c in r] for r in TRAJECTORY for s in SCALES])  # [5 * 4, 3]


def _hand_curvature() -> list[float]:
    def sub(a, b):
        return [x - y for x, y in zip(a, b)]

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    r = TRAJECTORY
    # t=1: in (-1,1,0), out (1,-1,0): cos -1 -> 2.  t=2: in (1,-1,0), out (-1,0,1): cos -1/2 -> 1.5.
    # t=3: in (-1,0,1), out (0,1,-1): cos -1/2 -> 1.5.  Ends: 1.
    inner = [1.0 - cos(sub(r[t], r[t - 1]), sub(r[t + 1], r[t])) for t in (1, 2, 3)]
    assert [round(k, 12) for k in inner] == [2.0, 1.5, 1.5]
    return [1.0, *inner, 1.0]


def test_curvature_on_a_five_slice_toy() -> None:
    got = curvature(torch.tensor(TRAJECTORY))
    assert torch.allclose(got, torch.tensor(_hand_curvature()), atol=1e-6)
    assert curvature(torch.tensor([E1])).tolist() == [1.0]
    assert curvature(torch.tensor([E1, E2])).tolist() == [1.0, 1.0]


def test_allocation_on_the_toy() -> None:
    kappa = _hand_curvature()
    exps = [math.exp(k / 0.7) for k in kappa]
    weights = [e / sum(exps) for e in exps]
    # B = round(5 * 4 * 0.5) = 10; min_k = 1 each leaves 5; raw = 5 w = 0.487, 2.034, 0.996, 0.996, 0.487.
    raw = [5 * w for w in weights]
    assert [math.floor(r) for r in raw] == [0, 2, 0, 0, 0]
    fractions = [r - math.floor(r) for r in raw]
    assert max(fractions) == fractions[2] == fractions[3]  # slices 2 and 3 tie; slice 2 (lower index) wins
    # Floors give 1 + 2 = 3 of 5 extra; the 3 leftover all go to slice 2 (official rule), which has room for 3.
    expected = [1, 3, 4, 1, 1]
    got = allocate_like_vcast(torch.softmax(torch.tensor(kappa) / 0.7, dim=0), 10, min_k=1, capacity=4)
    assert got.tolist() == expected


def test_selection_on_the_toy() -> None:
    cfg = PruneConfig(method="vcast", retention=0.5, min_tokens_per_slice=1)
    sel = select_tokens(_toy_features(), [(5, 2, 2)], [cfg])[0]
    assert sel.per_slice.tolist() == [1, 3, 4, 1, 1]
    # All tokens are parallel to their slice mean (outlier term 0), so the activation term decides:
    # norms 1, 2, 4, 3 -> min-max 0, 1/3, 1, 2/3: top-1 is token 2, top-3 is tokens 1, 2, 3.
    assert sel.kept.tolist() == [2, 5, 6, 7, 8, 9, 10, 11, 14, 18]


def test_dual_anchor_scores_by_hand() -> None:
    # One slice of unit tokens a = b = (1, 0), c = (0, 1); mean (2/3, 1/3) -> r = (2, 1) / sqrt(5).
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    r = torch.nn.functional.normalize(x.mean(1), dim=-1)
    scores = dual_anchor_scores(x, r)
    # Equal norms: the min-max term is 0 / (0 + 1e-6) = 0, so the score is 1 - cos(x, r).
    expected = [1 - 2 / math.sqrt(5), 1 - 2 / math.sqrt(5), 1 - 1 / math.sqrt(5)]
    assert torch.allclose(scores, torch.tensor([expected]), atol=1e-6)


def test_dual_anchor_selection_with_ties() -> None:
    slice_ = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    x = torch.tensor(slice_ + slice_)  # T = 2 identical slices: curvature 1, 1 -> equal weights
    # B = round(6 * 0.34) = 2 -> 1 per slice: token c (highest outlier score) in each slice.
    one = select_tokens(x, [(2, 1, 3)], [PruneConfig(method="vcast", retention=0.34)])[0]
    assert one.kept.tolist() == [2, 5]
    # B = round(6 * 0.67) = 4 -> 2 per slice: c, then a (tied with b, lower index).
    two = select_tokens(x, [(2, 1, 3)], [PruneConfig(method="vcast", retention=0.67)])[0]
    assert two.kept.tolist() == [0, 2, 3, 5]


def test_single_slice_video_is_not_pruned() -> None:
    sel = select_tokens(torch.randn(6, 4), [(1, 2, 3)], [PruneConfig(method="vcast", retention=0.25)])[0]
    assert sel.kept.tolist() == list(range(6))
