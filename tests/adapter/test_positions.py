"""Issue 4: pruned prompts get exactly the unpruned M-RoPE positions.

For random grids, kept masks, timestamps and prompt layouts (text, images, several videos), the positions
the plugin gives a pruned prompt (request-start positions + the offsets its video rows carry) must equal
the stock Qwen3-VL positions of the *unpruned* prompt gathered at the kept tokens, and the decode offset
must continue exactly where the unpruned prompt's would.
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

from vllm_vtprune.model import VtpruneQwen3VLForConditionalGeneration
from vllm_vtprune.positions import decode_offsets, encode_offsets
from vllm_vtprune.processor import CONFIG_FIELD, encode_settings, nominal_split
from vllm_vtprune.settings import VtpruneSettings


@pytest.fixture(scope="module")
def model(tiny_model):
    """Just the parts of the model that positions need: config, tokenizer, merge size (no weights)."""
    m = VtpruneQwen3VLForConditionalGeneration.__new__(VtpruneQwen3VLForConditionalGeneration)
    torch.nn.Module.__init__(m)
    m.config = AutoConfig.from_pretrained(tiny_model)
    m._tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    m.visual = SimpleNamespace(spatial_merge_size=2)
    m.merge_size = 2
    return m


def _item(**fields) -> MultiModalKwargsItem:
    return MultiModalKwargsItem(
        {k: MultiModalFieldElem(data=v, field=MultiModalFieldConfig.batched("video").field) for k, v in fields.items()}
    )


videos_st = st.lists(
    st.tuples(
        st.integers(1, 5), st.integers(1, 4), st.integers(1, 4),  # T, H', W'
        st.floats(0.5, 4.0),  # fps of the sampled frames
        st.randoms(use_true_random=False),
    ),
    min_size=1, max_size=2,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(videos=videos_st, with_image=st.booleans(), text_lens=st.lists(st.integers(0, 4), min_size=4, max_size=4))
def test_pruned_positions_equal_unpruned_positions_at_kept_tokens(model, videos, with_image, text_lens):
    cfg = model.config
    text = model._tokenizer.encode("the quick brown fox jumps", add_special_tokens=False)
    vs, ve = cfg.vision_start_token_id, cfg.vision_end_token_id
    pruned, unpruned, pruned_feats, unpruned_feats, expected_map, rows = [], [], [], [], [], []

    def add_text(n):
        for tok in (text * 2)[:n]:
            expected_map.append(len(unpruned))
            pruned.append(tok)
            unpruned.append(tok)

    def add_feature(modality, data, pruned_body, unpruned_body, body_map):
        add_text(1)  # stands for the prompt's outer <|vision_start|>
        pruned[-1] = unpruned[-1] = vs
        po, uo = len(pruned), len(unpruned)
        pruned_feats.append(MultiModalFeatureSpec(data, modality, f"p{po}", PlaceholderRange(po, len(pruned_body))))
        unpruned_feats.append(MultiModalFeatureSpec(data, modality, f"u{uo}", PlaceholderRange(uo, len(unpruned_body))))
        expected_map.extend(uo + j for j in body_map)
        pruned.extend(pruned_body)
        unpruned.extend(unpruned_body)
        add_text(1)
        pruned[-1] = unpruned[-1] = ve
        return po

    add_text(text_lens[0])
    for i, (t, h, w, fps, rnd) in enumerate(videos):
        timestamps = [(2 * s + 0.5) / fps for s in range(t)]
        mask = torch.tensor([rnd.random() < 0.5 for _ in range(t * h * w)], dtype=torch.bool)
        per_slice = mask.view(t, h * w).sum(1).tolist()
        total = sum(per_slice)
        data = _item(video_grid_thw=torch.tensor([t, 2 * h, 2 * w]), timestamps=timestamps,
                     **{CONFIG_FIELD: encode_settings(VtpruneSettings())})
        # The prompt's token ids carry an even split; the rows the model fills follow the actual one.
        prompt_body = model._video_repl(nominal_split(total, t, h * w), timestamps)
        actual_body = model._video_repl(per_slice, timestamps)
        full_body = model._video_repl([h * w] * t, timestamps)
        assert len(prompt_body) == len(actual_body)
        body_map, u = [], 0
        for s in range(t):  # walk the unpruned layout slice by slice
            n_text = full_body.index(vs, u) - u + 1  # timestamp tokens + vision_start
            body_map += list(range(u, u + n_text))
            kept = mask.view(t, h * w)[s].nonzero().flatten().tolist()
            body_map += [u + n_text + c for c in kept]
            body_map.append(u + n_text + h * w)  # vision_end
            u += n_text + h * w + 1
        offset = add_feature("video", data, prompt_body, full_body, body_map)
        rows.append((offset, per_slice, (t, 2 * h, 2 * w), timestamps, mask))
        add_text(text_lens[1 + i])
        if with_image and i == 0:
            ih, iw = 2, 3
            image = MultiModalKwargsItem({"image_grid_thw": MultiModalFieldElem(
                data=torch.tensor([1, 2 * ih, 2 * iw]), field=MultiModalFieldConfig.batched("image").field)})
            body = [cfg.image_token_id] * (ih * iw)
            add_feature("image", image, body, body, list(range(len(body))))
    add_text(text_lens[3] + 1)

    expected, expected_delta = Qwen3VLForConditionalGeneration._get_mrope_input_positions(unpruned, unpruned_feats, cfg)
    positions, delta = model.get_mrope_input_positions(pruned, pruned_feats)
    positions = positions.clone()
    for offset, per_slice, grid, timestamps, mask in rows:
        offsets = model.range_offsets(per_slice, grid, timestamps, mask)
        offsets = decode_offsets(encode_offsets(offsets, torch.bfloat16))  # as carried by a bf16 embedding
        positions[:, offset:offset + offsets.shape[1]] += offsets
    assert torch.equal(positions, expected[:, expected_map])
    assert len(pruned) + delta == len(unpruned) + expected_delta  # the first decoded token's position


@given(st.lists(st.tuples(st.integers(0, 262143), st.integers(0, 262143), st.integers(0, 262143)), max_size=20),
       st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_offset_channels_round_trip_exactly_in_every_dtype(values, dtype):
    offsets = torch.tensor(values, dtype=torch.long).reshape(-1, 3)
    assert torch.equal(decode_offsets(encode_offsets(offsets, dtype)), offsets.T)


def test_offsets_beyond_range_are_refused():
    with pytest.raises(ValueError, match="offsets must lie in"):
        encode_offsets(torch.tensor([[262144, 0, 0]]), torch.float32)
