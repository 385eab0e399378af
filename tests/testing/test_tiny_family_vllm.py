"""Vanilla vLLM 0.32 (no plugin) serves the tiny Qwen3-VL-MoE, Qwen3.5 and Qwen3.5-MoE with video.

One server per architecture, with prefix caching on and 64-token prefill chunks, so every video prompt spans
many chunks and a prompt that shares the video resumes from cached state: KV blocks for attention layers and,
for Qwen3.5's gated-delta-net layers, the recurrent-state snapshot vLLM keeps at a block boundary
(``mamba_cache_mode="align"``). The chunk size divides every block size vLLM picks here (128 dense, 256
hybrid), so a resumed prompt is cut into the same chunks as a cold one and must give the same answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from vllm_vtprune.testing.chat import VideoChat, output_tokens
from vllm_vtprune.testing.server import TINY_ARGS, VllmServer
from vllm_vtprune.testing.tiny_qwen3vl import ARCHITECTURES, DEFAULT_ARCH

FAMILY_ARCHS = tuple(arch for arch in ARCHITECTURES if arch != DEFAULT_ARCH)
LOGS = Path(__file__).resolve().parents[2] / ".artifacts"
VANILLA = {"VLLM_PLUGINS": ""}  # no plugin loaded at all
CHUNK = 64
QUESTION = "What happens in the video?"


def ask(client: VideoChat, video: Path, question: str, salt: str):
    return client.ask([video], question, max_tokens=8, return_token_ids=True, cache_salt=salt)


@pytest.fixture(scope="module")
def dense_reply(family_checkpoints, videos):
    """The dense Qwen3-VL's reply to the probe request: the reference prompt layout (its server is stopped
    before any other starts)."""
    model = family_checkpoints[DEFAULT_ARCH]
    with VllmServer(model, TINY_ARGS, env=VANILLA, log_path=LOGS / "server-vanilla-qwen3_vl.log") as server:
        return ask(VideoChat(server.url, str(model)), videos["moving_objects"], QUESTION, "dense")


@pytest.fixture(scope="module", params=FAMILY_ARCHS)
def family_chat(request, family_checkpoints, dense_reply) -> Iterator[tuple[str, VideoChat]]:
    arch, model = request.param, family_checkpoints[request.param]
    args = [*TINY_ARGS, "--enable-prefix-caching", "--max-num-batched-tokens", str(CHUNK),
            "--enable-prompt-tokens-details"]
    with VllmServer(model, args, env=VANILLA, log_path=LOGS / f"server-vanilla-{arch}.log") as server:
        assert f"Resolved architecture: {ARCHITECTURES[arch]}" in server.log_tail(10_000)
        yield arch, VideoChat(server.url, str(model))


def test_video_prompt_is_laid_out_as_for_dense_qwen3vl(family_chat, dense_reply, videos) -> None:
    arch, client = family_chat
    reply = ask(client, videos["moving_objects"], QUESTION, f"{arch}-layout")
    # Same processor, tokenizer and template: the expanded prompt (timestamps, per-slice vision markers,
    # video pads) is token for token the dense model's.
    assert reply.prompt_token_ids == dense_reply.prompt_token_ids
    assert reply.usage.prompt_tokens > 4 * CHUNK  # the prefill really ran in several chunks
    assert reply.usage.prompt_tokens_details.cached_tokens == 0
    assert 1 <= len(output_tokens(reply)) <= 8


def test_prefix_cache_hit_on_the_video_gives_the_cold_answer(family_chat, videos) -> None:
    arch, client = family_chat
    video = videos["slow_pan"]
    cold = ask(client, video, QUESTION, f"{arch}-cold")
    ask(client, video, "Describe the motion.", f"{arch}-warm")  # caches the video under another question
    warm = ask(client, video, QUESTION, f"{arch}-warm")
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert warm.usage.prompt_tokens_details.cached_tokens > 0.5 * warm.usage.prompt_tokens
    assert output_tokens(warm) == output_tokens(cold)
    assert np.allclose([t.logprob for t in warm.choices[0].logprobs.content],
                       [t.logprob for t in cold.choices[0].logprobs.content], atol=1e-3)
