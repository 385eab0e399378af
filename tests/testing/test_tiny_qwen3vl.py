"""The tiny/scaled Qwen3-VL checkpoint builder: determinism, reuse, token ids, processor, template, FLOPs."""

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vllm_vtprune.testing.tiny_qwen3vl import (
    SPECIAL_TOKENS,
    STAMP_FILE,
    build_tiny_qwen3vl,
    flops_per_video_token,
    qwen3vl_8b_config,
    scaled_config,
    tiny_config,
)
from vllm_vtprune.testing.videos import make_frames

_COMPARED_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
    "chat_template.jinja",
)


def test_build_is_deterministic_across_processes(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # A second build in another process: the tokenizer trainer and the weight init must not depend on
    # per-process state (hash seeds, RNG state left by earlier code).
    other = tmp_path / "again"
    cli = [sys.executable, "-m", "vllm_vtprune.testing.tiny_qwen3vl", str(other), "--seed", "0"]
    printed = subprocess.run(cli, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(printed) == other.resolve()
    for name in _COMPARED_FILES:
        assert (other / name).read_bytes() == (tiny_checkpoint / name).read_bytes(), name
    # The CLI's build is recognised as the same build.
    before = (other / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_qwen3vl(other, seed=0) == other.resolve()
    assert (other / "model.safetensors").stat().st_mtime_ns == before


def test_seed_changes_weights_only(tiny_checkpoint: Path, tmp_path: Path) -> None:
    other = build_tiny_qwen3vl(tmp_path / "seed1", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_checkpoint / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (tiny_checkpoint / "tokenizer.json").read_bytes()


def test_build_leaves_caller_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_qwen3vl(tmp_path / "ckpt", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_existing_build_is_reused_without_rewriting(tiny_checkpoint: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in tiny_checkpoint.iterdir()}
    start = time.perf_counter()
    assert build_tiny_qwen3vl(tiny_checkpoint, size="tiny", seed=0) == tiny_checkpoint
    assert time.perf_counter() - start < 0.5
    assert {p.name: p.stat().st_mtime_ns for p in tiny_checkpoint.iterdir()} == before


def test_stale_build_is_replaced_and_foreign_dir_refused(tmp_path: Path) -> None:
    out = build_tiny_qwen3vl(tmp_path / "ckpt", seed=0)
    first = (out / "model.safetensors").read_bytes()
    build_tiny_qwen3vl(out, seed=2)  # different stamp -> rebuilt in place
    assert json.loads((out / STAMP_FILE).read_text())["seed"] == 2
    assert (out / "model.safetensors").read_bytes() != first

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(FileExistsError):
        build_tiny_qwen3vl(foreign)
    assert (foreign / "notes.txt").exists()


def test_config_token_ids_match_tokenizer(tiny_checkpoint: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    config = AutoConfig.from_pretrained(tiny_checkpoint)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    for tok, tok_id in ids.items():
        assert tokenizer.encode(tok, add_special_tokens=False) == [tok_id], tok  # one unsplittable token
    assert config.architectures == ["Qwen3VLForConditionalGeneration"]
    assert config.image_token_id == ids["<|image_pad|>"]
    assert config.video_token_id == ids["<|video_pad|>"]
    assert config.vision_start_token_id == ids["<|vision_start|>"]
    assert config.vision_end_token_id == ids["<|vision_end|>"]
    assert config.text_config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    generation = GenerationConfig.from_pretrained(tiny_checkpoint)
    assert ids["<|im_end|>"] in generation.eos_token_id
    # The corpus covers the words vLLM inserts as video timestamps.
    assert tokenizer.tokenize("<1.5 seconds>") == ["<", "1", ".", "5", "Ġseconds", ">"]


def test_processor_expands_video_pads(tiny_checkpoint: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    frames = make_frames("moving_objects", num_frames=8, width=192, height=128)
    fps = 4.0
    out = processor(
        text=["<|vision_start|><|video_pad|><|vision_end|>Describe."],
        videos=[frames],
        videos_kwargs={
            "do_sample_frames": False,
            "video_metadata": [{"fps": fps, "total_num_frames": 8, "frames_indices": list(range(8))}],
        },
        return_tensors="pt",
    )
    # 8 frames / temporal patch 2 = 4 slices; 128x192 px / 16 px patches = 8x12 patches.
    assert out["video_grid_thw"].tolist() == [[4, 8, 12]]
    assert tuple(out["pixel_values_videos"].shape) == (4 * 8 * 12, 3 * 2 * 16 * 16)
    # Each slice: "<t seconds>" (mean time of its 2 frames), vision_start, (8/2)*(12/2) pads, vision_end.
    slices = "".join(
        f"<{(2 * t + 0.5) / fps:.1f} seconds><|vision_start|>" + "<|video_pad|>" * 24 + "<|vision_end|>"
        for t in range(4)
    )
    expected = f"<|vision_start|>{slices}<|vision_end|>Describe."
    assert processor.tokenizer.decode(out["input_ids"][0]) == expected


def test_video_pixel_budget_fits_64_frames_of_256px(tiny_checkpoint: Path) -> None:
    from transformers import AutoProcessor

    video_processor = AutoProcessor.from_pretrained(tiny_checkpoint).video_processor

    def grid(num_frames: int) -> list[int]:
        frames = make_frames("slow_pan", num_frames, 256, 256)
        return video_processor(videos=[frames], do_sample_frames=False)["video_grid_thw"][0].tolist()

    assert grid(64) == [32, 16, 16]  # full resolution: 32 slices x 64 tokens = 2048 video tokens
    assert grid(96) == [48, 12, 12]  # past the whole-clip budget, Qwen3-VL shrinks every frame


def test_chat_template_renders_qwen_style(tiny_checkpoint: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "video", "video": "a.mp4"}, {"type": "text", "text": "What moves?"}],
        },
        {"role": "assistant", "content": "A ball."},
        {
            "role": "user",
            "content": [
                {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}},
                {"type": "image"},
                {"type": "text", "text": "And now?"},
            ],
        },
    ]
    video, image = (
        "<|vision_start|><|video_pad|><|vision_end|>",
        "<|vision_start|><|image_pad|><|vision_end|>",
    )
    conversation = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        f"<|im_start|>user\n{video}What moves?<|im_end|>\n"
        "<|im_start|>assistant\nA ball.<|im_end|>\n"
        f"<|im_start|>user\n{video}{image}And now?<|im_end|>\n"
    )
    render = processor.apply_chat_template
    assert render(messages, tokenize=False, add_generation_prompt=False) == conversation
    assert (
        render(messages, tokenize=False, add_generation_prompt=True)
        == conversation + "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("make_config", [tiny_config, scaled_config, qwen3vl_8b_config])
def test_configs_fit_vllm_cpu_constraints(make_config) -> None:
    config = make_config()
    text, vision = config.text_config, config.vision_config
    assert text.head_dim in (64, 128)  # CPU attention rejects smaller heads
    assert 2 * sum(text.rope_parameters["mrope_section"]) == text.head_dim
    assert text.rope_parameters["mrope_interleaved"] is True
    assert math.isqrt(vision.num_position_embeddings) ** 2 == vision.num_position_embeddings
    assert vision.out_hidden_size == text.hidden_size
    assert all(0 <= i < vision.depth for i in vision.deepstack_visual_indexes)
    assert len(vision.deepstack_visual_indexes) <= text.num_hidden_layers
    assert text.max_position_embeddings >= 32768


def test_flop_count_matches_the_architecture() -> None:
    # Independent check of the closed-form count: 2 FLOPs per weight of every matmul the token passes
    # through, read off the real HF module tree (on the meta device: no memory, no init).
    from transformers import Qwen3VLForConditionalGeneration

    config = scaled_config()
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    visual, language_model = model.model.visual, model.model.language_model

    def linear_weights(module: torch.nn.Module) -> int:
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))

    vision_cfg = config.vision_config
    tokens_per_slice = 64
    patches_per_token = vision_cfg.spatial_merge_size**2
    attention = vision_cfg.depth * 4 * tokens_per_slice * patches_per_token * vision_cfg.hidden_size
    per_patch = 2 * (visual.patch_embed.proj.weight.numel() + linear_weights(visual.blocks)) + attention
    mergers = 2 * (linear_weights(visual.merger) + linear_weights(visual.deepstack_merger_list))
    vision, llm = flops_per_video_token(config, tokens_per_slice=tokens_per_slice)
    assert vision == patches_per_token * per_patch + mergers
    assert llm == 2 * linear_weights(language_model.layers)


def test_scaled_flop_ratio_tracks_qwen3vl_8b() -> None:
    vision_8b, llm_8b = flops_per_video_token(qwen3vl_8b_config())
    vision, llm = flops_per_video_token(scaled_config())
    # 8B: ~3.75 GFLOP in the ViT and ~13.9 GFLOP in the LLM per video token (2 x ~6.9B LLM matmul weights).
    assert 3.5e9 < vision_8b < 4.0e9 and 13.5e9 < llm_8b < 14.5e9
    ratio = (vision / llm) / (vision_8b / llm_8b)
    assert 0.5 <= ratio <= 2.0, ratio
    assert llm < llm_8b / 50  # and it really is small
