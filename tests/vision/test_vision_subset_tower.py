"""The tower on kept merge groups only (``run_subset_tower``) through vLLM's real ``Qwen3_VisionTransformer``.

Exactness: with nothing pruned it is the stock tower call bit for bit (fp32 and bf16). With groups pruned, every
kept token equals an oracle built from vLLM's own metadata: ``prepare_encoder_metadata`` of the whole video (its
position-embedding and rotary rows at the kept patches, i.e. the original positions) and of one grid per slice
holding exactly the slice's kept patches (vLLM's own ``cu_seqlens``: each slice attends over its kept tokens only),
fed to the stock ``forward``. A second oracle runs every slice in its own tower call (no batching across slices).
DeepStack levels are part of every row compared.
"""

from __future__ import annotations

import pytest
import torch

from vllm_vtprune.core import PruneConfig
from vllm_vtprune.core.pixels import PixelNorm, group_rows
from vllm_vtprune.core.pretower import select_pretower
from vllm_vtprune.vision.subset_tower import run_subset_tower

UNIT = 4  # patches per merge group (spatial_merge_size 2)
QWEN_NORM = PixelNorm((0.5,) * 3, (0.5,) * 3, 1 / 255)  # the test processor's (Qwen3-VL's) normalisation


def _random_pixels(grids, seed=0, dtype=torch.float32):
    rows = sum(t * h * w for t, h, w in grids)
    return torch.randn(rows, 1536, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _random_kept(grid, fraction, seed):
    """Ascending kept groups of one video: each slice keeps a random subset (at least one group)."""
    t, hp, wp = grid
    g = hp * wp // UNIT
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(t, g, generator=gen) < fraction
    keep[torch.arange(t), torch.randint(0, g, (t,), generator=gen)] = True
    return keep.flatten().nonzero().flatten()


def _oracle(tower, pixels, grid, kept, per_slice_calls=False):
    """The stock forward on the kept patches with vLLM's own metadata (see the module docstring)."""
    t, hp, wp = grid
    g = hp * wp // UNIT
    full = tower.prepare_encoder_metadata([grid])
    slices = kept // g
    parts = [kept[slices == s] for s in range(t)] if per_slice_calls else [kept]
    outs = []
    for groups in parts:
        if groups.numel() == 0:
            continue
        rows = group_rows(groups)
        counts = torch.bincount(groups // g, minlength=t)
        seqs = tower.prepare_encoder_metadata([[1, 2, 2 * int(c)] for c in counts if c > 0])
        meta = {key: seqs[key] for key in ("cu_seqlens", "max_seqlen", "sequence_lengths")}
        meta |= {key: full[key][rows] for key in ("pos_embeds", "rotary_pos_emb_cos", "rotary_pos_emb_sin")}
        with torch.inference_mode():
            outs.append(tower(pixels[rows], [grid], encoder_metadata=meta))
    return torch.cat(outs)


GRIDS = [
    [[2, 4, 4]],
    [[4, 8, 12]],
    [[3, 16, 16]],
    [[4, 8, 12], [3, 6, 10]],
    [[5, 6, 8], [1, 4, 4], [2, 8, 8]],
]
GRID_IDS = ["+".join("x".join(map(str, v)) for v in g) for g in GRIDS]


@pytest.mark.parametrize("grids", GRIDS, ids=GRID_IDS)
def test_nothing_pruned_equals_the_stock_tower_bitwise(tiny_tower, stock, grids):
    px = _random_pixels(grids)
    kept = [torch.arange(t * h * w // UNIT) for t, h, w in grids]
    with torch.inference_mode():
        got = run_subset_tower(tiny_tower, px, grids, kept)
    assert torch.equal(got, torch.cat(stock(tiny_tower, px, grids)))


@pytest.fixture(scope="module")
def bf16_tower(tiny_model: str, tiny_tower):
    from vllm_vtprune.testing.tiny_qwen3vl import tiny_config
    from vllm_vtprune.vision.standalone import build_vision_tower

    return build_vision_tower(tiny_config(), checkpoint=tiny_model, dtype=torch.bfloat16)


@pytest.mark.parametrize("grids", GRIDS[1:4], ids=GRID_IDS[1:4])
def test_nothing_pruned_equals_the_stock_tower_bitwise_bf16(bf16_tower, stock, grids):
    px = _random_pixels(grids, seed=1, dtype=torch.bfloat16)
    kept = [torch.arange(t * h * w // UNIT) for t, h, w in grids]
    with torch.inference_mode():
        got = run_subset_tower(bf16_tower, px, grids, kept)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, torch.cat(stock(bf16_tower, px, grids)))


@pytest.mark.parametrize("fraction", [0.5, 0.2])
@pytest.mark.parametrize("grids", GRIDS, ids=GRID_IDS)
def test_pruned_groups_equal_the_restricted_stock_computation(tiny_tower, stock, grids, fraction):
    px = _random_pixels(grids, seed=2)
    kept = [_random_kept(grid, fraction, seed=i) for i, grid in enumerate(grids)]
    starts = torch.tensor([0] + [t * h * w for t, h, w in grids]).cumsum(0)
    rows = torch.cat([start + group_rows(k) for start, k in zip(starts, kept)])
    with torch.inference_mode():
        got = run_subset_tower(tiny_tower, px[rows], grids, kept).split([k.numel() for k in kept])
        full = stock(tiny_tower, px, grids)
    for grid, start, groups, out, whole in zip(grids, starts, kept, got, full):
        video = px[start : start + grid[0] * grid[1] * grid[2]]
        assert torch.equal(out, _oracle(tiny_tower, video, grid, groups))
        # one call per slice: different GEMM shapes, so equal up to rounding (bitwise on this CPU, not promised)
        torch.testing.assert_close(out, _oracle(tiny_tower, video, grid, groups, per_slice_calls=True))
        # the restriction matters: kept tokens attend over fewer tokens than in the full tower
        assert not torch.allclose(out, whole[groups], atol=1e-3)


def test_repeated_slices_are_computed_once_bit_identically(tiny_tower):
    """Slices 1 and 3 repeat slice 0's pixels and kept groups: with ``slice_source`` the tower computes slice 0
    only (their pixels are not even passed) and their rows are bit-identical to computing all of them."""
    grid = [4, 8, 8]
    g = 16
    px = _random_pixels([grid], seed=3)
    px[64:128] = px[:64]
    px[192:256] = px[:64]
    in_slice = torch.tensor([0, 3, 4, 9, 15])
    kept = torch.cat([in_slice + s * g for s in range(4)])
    source = torch.tensor([-1, 0, -1, 0])
    with torch.inference_mode():
        everything = run_subset_tower(tiny_tower, px[group_rows(kept)], [grid], [kept])
        computed = kept[source[kept // g] < 0]
        reused = run_subset_tower(tiny_tower, px[group_rows(computed)], [grid], [kept], [source])
    assert computed.numel() == kept.numel() // 2
    assert torch.equal(reused, everything)
    assert torch.equal(reused[5:10], reused[:5]) and not torch.equal(reused[10:15], reused[:5])


@pytest.mark.parametrize("method", ["novelty", "dedup"])
def test_end_to_end_from_pixels(tiny_tower, video_pixels, method):
    """select_pretower on real clips (processor output, normalised floats), one batched subset-tower call on the
    selected rows only. The second clip is frozen (one slice six times): once the first slice is kept whole,
    the later slices keep the same groups with the same pixels, so they are computed once."""
    clip, (t, hp, wp) = video_pixels("moving_objects", 12, 64, 64)
    frozen = clip[: hp * wp].repeat(6, 1)
    grids = [[t, hp, wp], [6, hp, wp]]
    configs = [PruneConfig(method=method, retention=r) for r in (0.3, 0.5)]
    selections = select_pretower(torch.cat([clip, frozen]), grids, configs, norm=QWEN_NORM)
    assert (selections[1].slice_source[1:] >= 0).any()
    rows = torch.cat([clip[selections[0].pixel_rows()], frozen[selections[1].pixel_rows()]])
    assert rows.shape[0] < UNIT * sum(s.kept.numel() for s in selections)
    with torch.inference_mode():
        got = run_subset_tower(
            tiny_tower, rows, grids, [s.kept for s in selections], [s.slice_source for s in selections]
        )
    expected = [_oracle(tiny_tower, px, grid, s.kept) for px, grid, s in zip((clip, frozen), grids, selections)]
    assert torch.equal(got, torch.cat(expected))
