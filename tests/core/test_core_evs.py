"""EVS: a hand-computed example, the per-slice floor, and bit-exact parity with vLLM's own evs.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_vtprune.core import PruneConfig, select_tokens

from .conftest import make_features

# T = 3 slices of 1x2 tokens. Dissimilarity to the previous slice at the same position:
# slice 1: p0 (1,0)->(1,0) is 0, p1 (0,1)->(1,1) is 1 - 1/sqrt2 = 0.29; slice 2: p0 (1,0)->(0,1) is 1, p1 is 0.
TOY = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])


def _evs(retention: float, min_k: int = 0) -> PruneConfig:
    return PruneConfig(method="evs", retention=retention, min_tokens_per_slice=min_k)


def test_evs_on_a_toy() -> None:
    # int(6 * 0.5) = 3: slice 0 (sentinel 255) and the most changed token (slice 2, p0 -> index 4).
    assert select_tokens(TOY, [(3, 1, 2)], [_evs(0.5)])[0].kept.tolist() == [0, 1, 4]
    # int(6 * 0.67) = 4: next is slice 1, p1 (index 3).
    assert select_tokens(TOY, [(3, 1, 2)], [_evs(0.67)])[0].kept.tolist() == [0, 1, 3, 4]
    # int(6 * 0.1) = 0 -> at least one slice's worth (2 tokens): slice 0.
    assert select_tokens(TOY, [(3, 1, 2)], [_evs(0.1)])[0].kept.tolist() == [0, 1]


def test_evs_floor_reserves_each_slices_best_tokens() -> None:
    # Budget 3 >= 3 slices x 1: each slice first keeps its top token (slice 0: p0, slice 1: p1, slice 2: p0).
    sel = select_tokens(TOY, [(3, 1, 2)], [_evs(0.5, min_k=1)])[0]
    assert sel.kept.tolist() == [0, 3, 4]
    # Budget 4: the reserved three, then the global order (slice 0, p1 at 255).
    assert select_tokens(TOY, [(3, 1, 2)], [_evs(0.67, min_k=1)])[0].kept.tolist() == [0, 1, 3, 4]


def _vllm_evs():
    """vLLM's ``video_prune/evs.py`` loaded as a standalone file: it needs only torch, and importing the vllm package
    would take seconds."""
    path = Path(importlib.util.find_spec("vllm").origin).parent / "multimodal" / "video_prune" / "evs.py"
    assert path.exists(), f"{path}: vLLM's EVS moved; update the reference"
    module_spec = importlib.util.spec_from_file_location("_vllm_evs_reference", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@settings(deadline=None, max_examples=150)
@given(
    grid=st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 5)),
    q=st.floats(0.0, 0.99),
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(["gaussian", "palette", "constant", "repeat"]),
)
def test_matches_vllm_evs_exactly(grid, q, seed, kind) -> None:
    evs = _vllm_evs()
    t, h, w = grid
    if kind == "repeat":  # slices repeating the previous one: exact ties between d = 0 entries
        x = make_features((1, h, w), 8, seed).repeat(t, 1)
        x[h * w * (t // 2) :] += make_features((t - t // 2, h, w), 8, seed + 1)
    else:
        x = make_features(grid, 8, seed, kind)
    merge = 2
    reference = evs.compute_retention_mask(x, (t, h * merge, w * merge), merge, q)
    assert int(reference.sum()) == evs.compute_retained_tokens_count(h * w, t, q)
    sel = select_tokens(x, [grid], [_evs(1.0 - q)])[0]
    assert sel.kept.tolist() == reference.nonzero().flatten().tolist()
