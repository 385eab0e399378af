"""STC-Cacher fidelity on the generated videos (tiny checkpoint, vLLM's tower, CPU, fp32).

Figure reported (printed; run with ``-s``): per selective slice, the mean over its output tokens of the cosine
between the cacher's and the exact tower output (all channels: main merger and DeepStack), its worst token,
and the relative L2 error of the slice. References are exact by construction (checked in the exactness tests).

Bounds: measured on this tiny checkpoint (r = 0.25, interval 2, 20 frames at 256x256), over all selective
slices except scene_cut's cut slice: mean cosine >= 0.9997, worst token >= 0.999, relative error <= 0.03;
asserted with margin as >= 0.999, >= 0.995, <= 0.06. The slice holding the scene cut (its reference shows the
previous scene) is reported on its own: measured mean cosine ~0.95. A selector that recomputes the *least*
changed tokens instead (same budget) must do clearly worse (mean error measured 1.8x higher on near_static,
4-8x on the others): the selection,
not the budget alone, carries the fidelity.
"""

from __future__ import annotations

import pytest
import torch

from vllm_vtprune.testing.videos import KINDS
from vllm_vtprune.vision import CacherConfig, VideoEncoder, selective

CFG = CacherConfig(True, 0.25, 2)
FRAMES = 20  # 10 slices: 5 references, 5 selective; scene_cut cuts at frame 10, inside selective slice 5
CUT_SLICE = 5
# How much lower the STC selection's mean relative error must be than the inverse selection's. near_static's
# global one-grey-level flicker moves every token a little, so which tokens are recomputed matters less there.
FACTOR = {"moving_objects": 2.0, "slow_pan": 2.0, "near_static": 1.3}


def _per_slice(approx: torch.Tensor, exact: torch.Tensor, t: int):
    a, e = approx.view(t, -1, approx.shape[-1]), exact.view(t, -1, exact.shape[-1])
    cos = torch.nn.functional.cosine_similarity(a, e, dim=-1)  # [T, tokens]
    rel = (a - e).norm(dim=(1, 2)) / e.norm(dim=(1, 2))
    return cos.mean(1)[1::2], cos.min(1).values[1::2], rel[1::2]  # selective slices (odd t)


@pytest.fixture(scope="module")
def figures(tiny_tower, video_pixels):
    enc = VideoEncoder(tiny_tower)
    out = {}
    for kind in KINDS:
        px, g = video_pixels(kind, FRAMES, 256, 256)
        (exact,), _ = enc.encode(px, [g])
        (approx,), stats = enc.encode(px, [g], [CFG])
        assert stats.cacher_selective_slices == g[0] // 2
        out[kind] = _per_slice(approx, exact, g[0])
        if kind == "scene_cut":  # the cut (frame 10 = slice 5, selective) refers to the previous scene
            cut = CUT_SLICE // 2  # position among the selective (odd) slices
            keep = [i for i in range(len(out[kind][0])) if i != cut]
            out["scene_cut/cut slice"] = tuple(x[cut : cut + 1] for x in out[kind])
            out[kind] = tuple(x[keep] for x in out[kind])
        lowest_k = selective.lowest_k
        try:  # the inverse selector: recompute the tokens whose keys changed LEAST
            selective.lowest_k = lambda scores, k, _lowest=lowest_k: _lowest(-scores, k)
            (inverse,), _ = enc.encode(px, [g], [CFG])
        finally:
            selective.lowest_k = lowest_k
        out[kind + "/inverse"] = _per_slice(inverse, exact, g[0])
    print(
        f"\nSTC-Cacher fidelity (tiny tower, r=0.25, interval 2, {FRAMES} frames 256x256; selective slices only)"
    )
    print(
        f"{'video':<24}{'mean cos (min over slices)':>28}{'worst token':>13}{'mean rel err':>14}{'max rel err':>13}"
    )
    for name, (mean, worst, rel) in out.items():
        print(
            f"{name:<24}{mean.min().item():>28.5f}{worst.min().item():>13.4f}{rel.mean().item():>14.4f}"
            f"{rel.max().item():>13.4f}"
        )
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_fidelity_bounds(figures, kind):
    mean, worst, rel = figures[kind]
    assert mean.min().item() >= 0.999
    assert worst.min().item() >= 0.995
    assert rel.max().item() <= 0.06


def test_scene_cut_slice_is_the_weak_spot(figures):
    """Refresh is periodic (as released): a cut inside a selective slice reuses the previous scene's reference
    state for 75% of tokens. Still recognisably close, but far below the other slices."""
    mean, _, rel = figures["scene_cut/cut slice"]
    assert 0.9 <= mean.item() < 0.999
    assert rel.item() > 3 * figures["scene_cut"][2].max().item()


@pytest.mark.parametrize("kind", ["moving_objects", "slow_pan", "near_static"])
def test_selection_beats_inverse_selection(figures, kind):
    _, _, rel = figures[kind]
    _, _, rel_inv = figures[kind + "/inverse"]
    assert rel.mean().item() * FACTOR[kind] < rel_inv.mean().item()
