"""Shared helpers for the core selection tests: method variants, random videos, devices."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import strategies as st

from vllm_vtprune.core import PruneConfig

# Every method, and the options that change its code path.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("none", {}),
    ("evs", {}),
    ("vcast", {}),
    ("vcast", {"temperature": 0.2}),
    ("stc", {}),
    ("stc", {"strategy": "dual_anchor", "alpha": 0.3}),
    ("stc", {"chunk_slices": 1}),
    ("stc", {"chunk_slices": 2, "channel_keep_ratio": 0.25}),
    ("mssavt", {}),
    ("mssavt", {"mask": "greedy"}),
    ("mssavt", {"temporal": "evs", "alternate_parity": True}),
    ("mssavt", {"temporal": "dycoke", "parity": 1}),
    ("mssavt", {"temporal": "none"}),
    ("mssavt", {"temporal_share": 1.0, "mask": "greedy"}),
]
VARIANT_IDS = [f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for m, o in VARIANTS]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FEATURE_KINDS = ("gaussian", "palette", "constant", "zeros")


def make_config(variant: tuple[str, dict[str, Any]], retention: float, min_k: int) -> PruneConfig:
    method, options = variant
    return PruneConfig.from_dict(
        {"method": method, "retention": retention, "min_tokens_per_slice": min_k, "options": options}
    )


def make_features(
    grid: tuple[int, int, int],
    channels: int,
    seed: int,
    kind: str = "gaussian",
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> torch.Tensor:
    """[T*H*W, C] features. ``palette`` repeats a few vectors (exact ties everywhere), ``constant`` is one vector
    everywhere, ``zeros`` is all zeros (degenerate norms)."""
    t, h, w = grid
    n = t * h * w
    gen = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        x = torch.randn(n, channels, generator=gen)
    elif kind == "palette":
        palette = torch.randn(3, channels, generator=gen)
        x = palette[torch.randint(0, 3, (n,), generator=gen)]
    elif kind == "constant":
        x = torch.randn(1, channels, generator=gen).expand(n, channels).clone()
    else:
        x = torch.zeros(n, channels)
    return x.to(dtype=dtype, device=device)


grids = st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 5))
retentions = st.one_of(
    st.sampled_from([1.0, 0.5, 0.25, 1e-4]), st.floats(min_value=1e-3, max_value=1.0, exclude_min=False)
)


@st.composite
def videos(draw: st.DrawFn, variant_indices: list[int] | None = None) -> dict[str, Any]:
    """One random video: grid, config (a valid one for the grid), features seed and kind."""
    grid = draw(grids)
    indices = variant_indices if variant_indices is not None else list(range(len(VARIANTS)))
    variant = VARIANTS[draw(st.sampled_from(indices))]
    min_k = draw(st.integers(0, min(3, grid[1] * grid[2])))
    return {
        "grid": grid,
        "config": make_config(variant, draw(retentions), min_k),
        "seed": draw(st.integers(0, 2**31 - 1)),
        "kind": draw(st.sampled_from(FEATURE_KINDS)),
    }


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param
