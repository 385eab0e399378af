"""Pruned prompts get exactly the unpruned M-RoPE positions, through vLLM's own position hooks.

For random grids, kept masks, timestamps and prompt layouts (text, images, several videos, exact and dynamic
layouts), a pruned prompt's positions -- the request-start positions, then ``recompute_mrope_positions`` over
the prefill windows a scheduler could choose, fed the rows ``embed_multimodal`` would produce -- must equal the
stock Qwen3-VL positions of the *unpruned* prompt gathered at the kept tokens, and the decode offset must
continue exactly where the unpruned prompt's would.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoConfig, AutoTokenizer
from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration
from vllm.multimodal.inputs import (
    MultiModalFeatureSpec,
    MultiModalFieldConfig,
    MultiModalFieldElem,
    MultiModalKwargsItem,
    PlaceholderRange,
)

from vllm_vtprune.core import PruneConfig
from vllm_vtprune.layout import TokenIds, VideoLayout, timestamp_ids
from vllm_vtprune.model import VtpruneQwen3VLForConditionalGeneration
from vllm_vtprune.mrope import decode_rows, digits_for, encode_rows, middle_plan
from vllm_vtprune.settings import VtpruneSettings
from vllm_vtprune.wire import PLAN_FIELD, ItemPlan

PLAIN = 8  # width of a tower row in this test (only the channels after it matter)


@pytest.fixture(scope="module")
def model(tiny_model):
    """Just the parts of the model that positions need: config, tokenizer, merge size (no weights)."""
    m = VtpruneQwen3VLForConditionalGeneration.__new__(VtpruneQwen3VLForConditionalGeneration)
    torch.nn.Module.__init__(m)
    m.config = AutoConfig.from_pretrained(tiny_model)
    m._tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    m.visual = SimpleNamespace(spatial_merge_size=2)
    m.merge_size = 2
    m.ids = TokenIds.from_hf_config(m.config)
    m.plain_width = PLAIN
    m.position_digits = digits_for(m.config.text_config.max_position_embeddings)
    m.zero_offsets = False
    m.metrics = None
    return m


def _item(**fields) -> MultiModalKwargsItem:
    return MultiModalKwargsItem(
        {k: MultiModalFieldElem(data=v, field=MultiModalFieldConfig.batched("video").field) for k, v in fields.items()}
    )


def _rows(model, layout: VideoLayout, mask: torch.Tensor | None) -> torch.Tensor:
    """What embed_multimodal returns for this video: the exact layout's tower rows, or the middle's rows."""
    if mask is None:
        return torch.zeros(layout.unpruned, PLAIN)
    per_slice = mask.view(layout.grid[0], -1).sum(1)
    is_video, offsets, _ = middle_plan(layout, per_slice, mask.flatten().nonzero().flatten(), model.ids)
    index = torch.arange(is_video.numel()).unsqueeze(1)
    channels = encode_rows(torch.cat([offsets, index], 1), model.position_digits, torch.bfloat16)
    return torch.cat([torch.zeros(is_video.numel(), PLAIN, dtype=torch.bfloat16), channels], 1)


videos_st = st.lists(
    st.tuples(
        st.integers(1, 5), st.integers(1, 4), st.integers(1, 4),  # T, H', W'
        st.floats(0.5, 4.0),  # fps of the sampled frames
        st.randoms(use_true_random=False),
        st.booleans(),  # exact layout (every token kept)
    ),
    min_size=1, max_size=2,
)


def build_case(model, videos, with_image, text_lens):
    """A prompt with the given videos (exact or with a random kept mask), maybe an image, and text between.

    Returns the pruned prompt, its features, the rows ``embed_multimodal`` gives each feature, and the oracle:
    the stock positions of the unpruned prompt gathered at the tokens the pruned prompt holds."""
    cfg = model.config
    ids = model.ids
    text = model._tokenizer.encode("the quick brown fox jumps", add_special_tokens=False)
    pruned, unpruned, pruned_feats, unpruned_feats, expected_map, rows_of = [], [], [], [], [], []

    def add_text(n, token=None):
        for tok in (text * 2)[:n] if token is None else [token]:
            expected_map.append(len(unpruned))
            pruned.append(tok)
            unpruned.append(tok)

    def add_feature(modality, data, pruned_body, unpruned_body, body_map, rows, is_embed):
        add_text(1, ids.vision_start)  # the prompt's outer <|vision_start|>
        po, uo = len(pruned), len(unpruned)
        pruned_feats.append(MultiModalFeatureSpec(data, modality, f"p{po}",
                                                  PlaceholderRange(po, len(pruned_body), is_embed=is_embed)))
        unpruned_feats.append(MultiModalFeatureSpec(data, modality, f"u{uo}", PlaceholderRange(uo, len(unpruned_body))))
        expected_map.extend(uo + j for j in body_map)
        pruned.extend(pruned_body)
        unpruned.extend(unpruned_body)
        rows_of.append(rows)
        add_text(1, ids.vision_end)

    add_text(text_lens[0])
    for i, (t, h, w, fps, rnd, exact) in enumerate(videos):
        timestamps = [(2 * s + 0.5) / fps for s in range(t)]
        mask = None if exact else torch.tensor([rnd.random() < 0.5 for _ in range(t * h * w)], dtype=torch.bool)
        if mask is not None and not mask.any():
            mask[rnd.randrange(t * h * w)] = True
        kept = t * h * w if mask is None else int(mask.sum())
        ts = timestamp_ids(model._tokenizer, timestamps)
        layout = VideoLayout((t, h, w), ts, kept)
        full = VideoLayout((t, h, w), ts, t * h * w).prompt_ids(ids)
        plan = ItemPlan(VtpruneSettings(prune=PruneConfig("vcast", 0.5)), kept)
        data = _item(video_grid_thw=torch.tensor([t, 2 * h, 2 * w]), timestamps=timestamps,
                     **{PLAN_FIELD: plan.encode()})
        # The real sequence: per slice its timestamp, vision start, kept cells, vision end; mapped onto the
        # unpruned prompt.
        body_map, u = [], 0
        for s in range(t):
            n_text = len(ts[s]) + 1
            body_map += list(range(u, u + n_text))
            cells = range(h * w) if mask is None else mask.view(t, h * w)[s].nonzero().flatten().tolist()
            body_map += [u + n_text + c for c in cells]
            body_map.append(u + n_text + h * w)
            u += n_text + h * w + 1
        body = layout.prompt_ids(ids)
        assert len(body) == len(body_map)  # the placeholder is exactly as long as the real sequence
        add_feature("video", data, body, full, body_map, _rows(model, layout, mask),
                    torch.tensor(body) == ids.video_pad)
        add_text(text_lens[1 + i])
        if with_image and i == 0:
            ih, iw = 2, 3
            image = MultiModalKwargsItem({"image_grid_thw": MultiModalFieldElem(
                data=torch.tensor([1, 2 * ih, 2 * iw]), field=MultiModalFieldConfig.batched("image").field)})
            body = [cfg.image_token_id] * (ih * iw)
            add_feature("image", image, body, body, list(range(len(body))), torch.zeros(len(body), PLAIN), None)
    add_text(text_lens[3] + 1)
    expected, expected_delta = Qwen3VLForConditionalGeneration._get_mrope_input_positions(unpruned, unpruned_feats, cfg)
    return pruned, pruned_feats, rows_of, expected[:, expected_map], len(unpruned) + expected_delta - len(pruned)


def window_embeddings(features, rows_of, start, stop):
    """The rows vLLM's runners gather for prompt window ``[start, stop)`` (``PlaceholderRange`` semantics)."""
    out = []
    for f, rows in zip(features, rows_of):
        pos = f.mm_position
        lo, hi = max(start - pos.offset, 0), min(stop - pos.offset, pos.length)
        if lo >= hi:
            continue
        first, last = pos.get_embeds_indices_in_range(lo, hi)
        if first == last:
            continue
        piece = rows[first:last]
        piece.modality = f.modality
        out.append(piece)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(videos=videos_st, with_image=st.booleans(), text_lens=st.lists(st.integers(0, 4), min_size=4, max_size=4),
       chunk=st.integers(1, 64), drafter_shift=st.booleans())
def test_pruned_positions_equal_unpruned_positions_at_kept_tokens(model, videos, with_image, text_lens, chunk,
                                                                   drafter_shift):
    pruned, features, rows_of, expected, expected_delta = build_case(model, videos, with_image, text_lens)
    positions, delta = model.get_mrope_input_positions(pruned, features)
    positions = positions.clone()
    assert delta == expected_delta  # the first decoded token's position
    for start in range(0, len(pruned), chunk):  # prefill windows a scheduler could choose
        window = window_embeddings(features, rows_of, start, min(start + chunk, len(pruned)))
        # vLLM's V1 drafter passes a window's embeddings with the window start one token early.
        reported = start - 1 if drafter_shift and start > 0 else start
        stripped, _, d = model.recompute_mrope_positions(pruned, window, positions, reported)
        assert d == delta and all(s.shape[-1] == PLAIN for s in stripped)
    assert torch.equal(positions, expected)


@given(st.lists(st.tuples(*[st.integers(0, 262143)] * 4), max_size=20),
       st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_position_channels_round_trip_exactly_in_every_dtype(values, dtype):
    rows = torch.tensor(values, dtype=torch.long).reshape(-1, 4)
    digits = digits_for(262143)
    assert torch.equal(decode_rows(encode_rows(rows, digits, dtype), digits), rows)


def test_digits_cover_any_position_limit():
    assert digits_for(262143) == 3 and digits_for(262144) == 4 and digits_for(63) == 1


class _RopeState:
    """V2's per-request prefill positions (``v1/worker/gpu/mm/rope.py``), kept as int32 as vLLM keeps them."""

    def __init__(self, positions: list[torch.Tensor]) -> None:
        self.positions = [p.to(torch.int32) for p in positions]
        self.delta = [None] * len(positions)

    def read_prefill_positions(self, req_idx: int, length: int) -> torch.Tensor:
        return self.positions[req_idx][:, :length]

    def update_prefill_positions(self, req_idx: int, positions: torch.Tensor, delta: int) -> None:
        self.positions[req_idx][:, :positions.shape[1]] = positions
        self.delta[req_idx] = delta


def test_v2_runners_pruner_places_rows_through_the_hook(model):
    """vLLM's V2 runner calls the hook through its own ``MultiModalPruner``, per request of a batch; drafters
    get the rows stripped by its ``strip``."""
    import random

    import numpy as np
    from vllm.v1.worker.gpu.model_states.mm_pruning import MultiModalPruner

    rng = random.Random(3)
    cases = [build_case(model, [(3, 2, 3, 2.0, rng, False), (2, 2, 2, 1.0, rng, True)], True, [2, 1, 0, 3]),
             build_case(model, [(4, 3, 2, 1.5, rng, False)], False, [0, 2, 1, 1])]
    starts = [model.get_mrope_input_positions(c[0], c[1]) for c in cases]
    rope = _RopeState([p for p, _ in starts])
    cache = SimpleNamespace(mm_features={str(i): c[1] for i, c in enumerate(cases)})
    pruner = MultiModalPruner(model, rope, cache, inputs_embeds_size=PLAIN)
    lengths = [len(c[0]) for c in cases]
    tokens = torch.zeros(2, max(lengths), dtype=torch.long)
    for i, c in enumerate(cases):
        tokens[i, :lengths[i]] = torch.tensor(c[0])
    computed = [0, 0]
    for chunk in (7, 11, 5, 13) * 20:  # steps with both requests in the batch, uneven windows
        batch = [i for i in range(2) if computed[i] < lengths[i]]
        if not batch:
            break
        scheduled = [min(chunk + i, lengths[i] - computed[i]) for i in batch]
        embeds = [e for i, n in zip(batch, scheduled)
                  for e in window_embeddings(cases[i][1], cases[i][2], computed[i], computed[i] + n)]
        input_batch = SimpleNamespace(req_ids=[str(i) for i in batch], idx_mapping_np=np.array(batch),
                                      prefill_len_np=np.array([lengths[i] for i in batch]),
                                      num_computed_prefill_tokens_np=np.array([computed[i] for i in batch]),
                                      num_scheduled_tokens=np.array(scheduled))
        cleaned = pruner.recompute(embeds, input_batch, SimpleNamespace(all_token_ids=SimpleNamespace(gpu=tokens)))
        assert [e.shape[0] for e in cleaned] == [e.shape[0] for e in embeds]
        assert all(e.shape[-1] == PLAIN for e in cleaned + pruner.strip(embeds))
        for i, n in zip(batch, scheduled):
            computed[i] += n
    for i, c in enumerate(cases):
        assert torch.equal(rope.positions[i].long(), c[3])
        assert rope.delta[i] == c[4]
