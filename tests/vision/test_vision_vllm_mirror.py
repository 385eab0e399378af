"""The code copied from vLLM (``vllm_vtprune.vision.vllm_mirror``): tripwires on the upstream sources, and each copy
against the stock computation it mirrors (tiny checkpoint, vLLM's tower, CPU, fp32)."""

from __future__ import annotations

import hashlib
import importlib
import inspect

import pytest
import torch

from vllm_vtprune.vision import vllm_mirror

UPSTREAM = {**vllm_mirror.MIRRORED, **vllm_mirror.RELIED_ON}
GRIDS = [[[2, 4, 4]], [[4, 8, 12], [3, 6, 10]], [[5, 6, 8], [1, 4, 4], [2, 8, 8]]]


def _upstream(path: str):
    module, _, attributes = path.partition(":")
    obj = importlib.import_module(module)
    for name in attributes.split("."):
        obj = getattr(obj, name)
    return obj


@pytest.mark.parametrize("path", sorted(UPSTREAM))
def test_upstream_source_is_the_one_mirrored(path):
    """A change fails here: re-read the upstream function, update its copy in ``vllm_mirror`` (or re-check what
    ``RELIED_ON`` says of it), then the digest."""
    source = inspect.getsource(_upstream(path))
    assert hashlib.sha256(source.encode()).hexdigest() == UPSTREAM[path]


@pytest.mark.parametrize("grids", GRIDS)
def test_attention_metadata_matches_prepare_encoder_metadata(tiny_tower, grids):
    """With whole slices as the sequences, the copy equals vLLM's own metadata."""
    stock_meta = tiny_tower.prepare_encoder_metadata(grids)
    ours = vllm_mirror.slice_attention_metadata(tiny_tower, [h * w for t, h, w in grids for _ in range(t)])
    for key in ("cu_seqlens", "max_seqlen", "sequence_lengths"):
        a, b = ours[key], stock_meta[key]
        assert (a is None and b is None) or torch.equal(a, b), key


@pytest.mark.parametrize("grids", GRIDS)
def test_block_forward_is_the_stock_block(tiny_tower, grids):
    """Every block's output bit for bit, and the intermediates it returns add up to it."""
    rows = sum(t * h * w for t, h, w in grids)
    x = torch.randn(rows, 1, tiny_tower.blocks[0].norm1.normalized_shape[0], generator=torch.Generator().manual_seed(0))
    meta = tiny_tower.prepare_encoder_metadata(grids)
    with torch.inference_mode():
        for blk in tiny_tower.blocks:
            stock = blk(x, cu_seqlens=meta["cu_seqlens"], rotary_pos_emb_cos=meta["rotary_pos_emb_cos"],
                        rotary_pos_emb_sin=meta["rotary_pos_emb_sin"], max_seqlen=meta["max_seqlen"],
                        sequence_lengths=meta.get("sequence_lengths"))
            ours, k, v, a, m = vllm_mirror.block_forward(blk, x, meta)
            assert torch.equal(ours, stock)
            assert torch.equal(x + a + m, ours)
            assert k.shape == v.shape == (1, rows, blk.attn.num_attention_heads_per_partition,
                                          blk.attn.hidden_size_per_attention_head)
            x = stock


def test_embed_patches_and_run_layers_are_the_stock_forward(tiny_tower):
    grids = GRIDS[1]
    px = torch.randn(sum(t * h * w for t, h, w in grids), 1536, generator=torch.Generator().manual_seed(1))
    meta = tiny_tower.prepare_encoder_metadata(grids)
    with torch.inference_mode():
        hidden = [(vllm_mirror.embed_patches(tiny_tower, px) + meta["pos_embeds"]).unsqueeze(1)]

        def run_block(_, blk):
            hidden[0] = vllm_mirror.block_forward(blk, hidden[0], meta)[0]

        ours = vllm_mirror.run_layers(tiny_tower, run_block, lambda: hidden[0])
        assert torch.equal(ours, tiny_tower(px, grids))


def test_apply_rotary_is_vllms_op(tiny_tower):
    attn = tiny_tower.blocks[0].attn
    x = torch.randn(2, 24, attn.num_attention_heads_per_partition, attn.hidden_size_per_attention_head)
    cos, sin = tiny_tower.rot_pos_emb([[1, 4, 6]])
    torch.testing.assert_close(vllm_mirror.apply_rotary(attn, x, cos, sin), attn.apply_rotary_emb(x, cos, sin),
                               rtol=1e-6, atol=1e-6)
