"""The builder's other Qwen3-VL-family architectures: Qwen3-VL-MoE, Qwen3.5 and Qwen3.5-MoE (no server)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vllm_vtprune.testing.tiny_qwen3vl import (
    ARCHITECTURES,
    DEFAULT_ARCH,
    SPECIAL_TOKENS,
    STAMP_FILE,
    build_tiny_qwen3vl,
    tiny_config,
)

FAMILY_ARCHS = tuple(arch for arch in ARCHITECTURES if arch != DEFAULT_ARCH)

_CHECKPOINT_FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                     "tokenizer_config.json", "processor_config.json", "chat_template.jinja")
# Everything but the weights and the model config is the dense model's, byte for byte.
_SHARED_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
                 "chat_template.jinja")


@pytest.mark.parametrize("arch", FAMILY_ARCHS)
def test_build_is_deterministic_across_processes(family_checkpoints, arch: str, tmp_path: Path) -> None:
    other = tmp_path / arch
    cli = [sys.executable, "-m", "vllm_vtprune.testing.tiny_qwen3vl", str(other), "--arch", arch]
    subprocess.run(cli, check=True, capture_output=True)
    for name in _CHECKPOINT_FILES:
        assert (other / name).read_bytes() == (family_checkpoints[arch] / name).read_bytes(), name
    assert build_tiny_qwen3vl(other, arch=arch) == other.resolve()  # recognised as the same build


@pytest.mark.parametrize("arch", FAMILY_ARCHS)
def test_shares_dense_tokenizer_template_and_processor(family_checkpoints, arch: str) -> None:
    from transformers import AutoConfig, AutoProcessor

    dense, ckpt = family_checkpoints[DEFAULT_ARCH], family_checkpoints[arch]
    for name in _SHARED_FILES:
        assert (ckpt / name).read_bytes() == (dense / name).read_bytes(), name
    # transformers may pick another tokenizer class per model type (Qwen3.5's adds NFC normalisation), so
    # check what it loads, not only the files.
    processor, dense_processor = AutoProcessor.from_pretrained(ckpt), AutoProcessor.from_pretrained(dense)
    assert type(processor).__name__ == "Qwen3VLProcessor"
    assert type(processor.video_processor).__name__ == "Qwen3VLVideoProcessor"
    text = "".join(SPECIAL_TOKENS) + "Describe the video. At <2.5 seconds> the red circle moves."
    assert processor.tokenizer.encode(text) == dense_processor.tokenizer.encode(text)
    config, dense_config = AutoConfig.from_pretrained(ckpt), AutoConfig.from_pretrained(dense)
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert getattr(config, key) == getattr(dense_config, key), key
    assert config.text_config.vocab_size == dense_config.text_config.vocab_size == len(processor.tokenizer)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_config_is_what_vllm_expects(arch: str) -> None:
    from vllm import ModelRegistry

    config = tiny_config(arch)
    text, vision = config.text_config, config.vision_config
    assert config.model_type == arch
    assert config.architectures == [ARCHITECTURES[arch]]
    assert ARCHITECTURES[arch] in ModelRegistry.get_supported_archs()
    rotary_dim = text.head_dim * text.rope_parameters.get("partial_rotary_factor", 1.0)
    assert text.head_dim >= 64  # CPU attention rejects smaller heads
    assert 2 * sum(text.rope_parameters["mrope_section"]) == rotary_dim
    assert text.rope_parameters["mrope_interleaved"] is True
    assert vision.out_hidden_size == text.hidden_size
    assert not hasattr(text, "mtp_num_hidden_layers")  # no multi-token-prediction head
    if arch.startswith("qwen3_vl"):
        assert len(vision.deepstack_visual_indexes) == text.num_hidden_layers
    else:  # Qwen3.5: no DeepStack, hybrid layers, rotary on a quarter of each head
        assert not hasattr(vision, "deepstack_visual_indexes")
        assert text.layer_types == ["linear_attention"] * 3 + ["full_attention"]
        assert text.rope_parameters["partial_rotary_factor"] == 0.25
    if arch.endswith("moe"):
        assert text.num_experts > text.num_experts_per_tok > 1
        assert 2 * text.moe_intermediate_size != text.hidden_size  # fused expert layouts tell apart by shape


@pytest.mark.parametrize("arch", FAMILY_ARCHS)
def test_checkpoint_holds_the_seeded_model(family_checkpoints, arch: str) -> None:
    # HF reads both expert layouts (it transposes by shape), so loading must give back the very weights
    # the seeded init produced, whatever layout the file uses.
    import transformers

    torch.manual_seed(0)
    expected = getattr(transformers, ARCHITECTURES[arch])(tiny_config(arch)).to(torch.bfloat16).state_dict()
    loaded = transformers.AutoModelForImageTextToText.from_pretrained(family_checkpoints[arch], dtype=torch.bfloat16)
    assert type(loaded).__name__ == ARCHITECTURES[arch]
    state = loaded.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


def test_qwen3_vl_moe_experts_use_the_published_layout(family_checkpoints) -> None:
    # Qwen3-VL-30B-A3B: gate_up_proj [E, hidden, 2 * inter], down_proj [E, inter, hidden]; vLLM transposes
    # both on load (is_fused_checkpoint_transposed).
    from safetensors import safe_open

    text = tiny_config("qwen3_vl_moe").text_config
    experts, hidden, inter = text.num_experts, text.hidden_size, text.moe_intermediate_size
    with safe_open(family_checkpoints["qwen3_vl_moe"] / "model.safetensors", "pt") as f:
        shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
    for layer in range(text.num_hidden_layers):
        prefix = f"model.language_model.layers.{layer}.mlp.experts"
        assert shapes[f"{prefix}.gate_up_proj"] == [experts, hidden, 2 * inter]
        assert shapes[f"{prefix}.down_proj"] == [experts, inter, hidden]
    assert not any(name.startswith("mtp.") for name in shapes)


def test_arch_is_part_of_the_stamp_but_dense_stamps_are_unchanged(tmp_path: Path) -> None:
    out = build_tiny_qwen3vl(tmp_path / "ckpt", arch="qwen3_5")
    assert json.loads((out / STAMP_FILE).read_text())["arch"] == "qwen3_5"
    build_tiny_qwen3vl(out)  # another arch in the same directory: rebuilt as the dense model
    assert "arch" not in json.loads((out / STAMP_FILE).read_text())  # as before `arch` existed
    assert json.loads((out / "config.json").read_text())["architectures"] == [ARCHITECTURES[DEFAULT_ARCH]]


def test_unknown_arch_and_scaled_family_builds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="arch"):
        build_tiny_qwen3vl(tmp_path / "a", arch="qwen2_5_vl")
    with pytest.raises(ValueError, match="scaled"):
        build_tiny_qwen3vl(tmp_path / "b", size="scaled", arch="qwen3_5")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
