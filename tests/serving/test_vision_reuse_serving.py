"""Issue 5 in real serving: the exact slice cache across requests, and STC-Cacher per request."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vllm_vtprune.testing.chat import output_tokens
from vllm_vtprune.testing.videos import make_frames, write_mp4


def counter(server, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", server.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def growing_video(tmp_path_factory) -> list:
    """One clip resent with more frames each turn, as a client streaming a growing video would."""
    frames = make_frames("moving_objects", 40, 256, 256, seed=11)
    out = tmp_path_factory.mktemp("growing")
    return [write_mp4(frames[:n], out / f"turn_{n}.mp4", fps=4.0) for n in (16, 24, 32, 40)]


def test_growing_video_reuses_earlier_slices_every_turn(plugin_server, chat, growing_video):
    client = chat(plugin_server)
    hits, misses = [], []
    for video in growing_video:
        before = (counter(plugin_server, "vtprune:slice_cache_hits_total"),
                  counter(plugin_server, "vtprune:slice_cache_misses_total"))
        client.ask([video], max_tokens=4, vtprune={"stream_id": "growing"})
        hits.append(counter(plugin_server, "vtprune:slice_cache_hits_total") - before[0])
        misses.append(counter(plugin_server, "vtprune:slice_cache_misses_total") - before[1])
    assert all(h > 0 for h in hits[1:]), hits  # every turn after the first reuses slices
    # Each turn adds two slices; the frame sampler also shifts the old clip's last slice, so that one misses too.
    assert sum(hits[1:]) > sum(misses[1:]), (hits, misses)
    assert counter(plugin_server, "vtprune:vision_tower_seconds_saved_total") > 0


def test_cached_slices_give_the_uncached_answer(plugin_server, chat, growing_video):
    client = chat(plugin_server)
    client.ask([growing_video[1]], max_tokens=2)  # fills the cache with the shared slices
    cached = client.ask([growing_video[2]], "Describe it.", max_tokens=12)
    uncached = client.ask([growing_video[2]], "Describe it.", max_tokens=12, vtprune={"slice_cache": False})
    assert output_tokens(cached) == output_tokens(uncached)
    assert [t.logprob for t in cached.choices[0].logprobs.content] == \
        [t.logprob for t in uncached.choices[0].logprobs.content]  # bit-identical: the cache is exact


def test_stc_cacher_per_request(plugin_server, chat, videos):
    client = chat(plugin_server)
    selective = counter(plugin_server, "vtprune:cacher_selective_slices_total")
    plain = client.ask([videos["near_static"]], max_tokens=8, vtprune={"slice_cache": False})
    cached = client.ask([videos["near_static"]], max_tokens=8,
                        vtprune={"slice_cache": False, "cacher": {"enabled": True, "recompute_ratio": 0.25}})
    assert cached.usage.prompt_tokens == plain.usage.prompt_tokens  # the cacher never changes token counts
    assert counter(plugin_server, "vtprune:cacher_selective_slices_total") > selective
    lp_plain = np.array([t.logprob for t in plain.choices[0].logprobs.content])
    lp_cached = np.array([t.logprob for t in cached.choices[0].logprobs.content])
    assert not np.array_equal(lp_plain, lp_cached)  # approximate features really reached the LLM


def test_chunk_per_item_streaming_hits_the_prefix_cache(plugin_server, chat, tmp_path):
    """The streaming pattern that needs no slice cache: each new chunk is its own video item, so the earlier
    items keep their hashes and their KV comes from vLLM's prefix cache."""
    frames = make_frames("slow_pan", 32, 256, 256, seed=5)
    chunks = [write_mp4(frames[i:i + 16], tmp_path / f"chunk{i}.mp4", fps=4.0) for i in (0, 16)]
    client = chat(plugin_server)
    settings = {"stream_id": "cam", "method": "stc", "retention": 0.9}  # long enough to fill whole KV blocks
    first = client.ask(chunks[:1], "What is shown?", max_tokens=2, vtprune=settings, return_token_ids=True)
    both = client.ask(chunks, "What is shown?", max_tokens=2, vtprune=settings, return_token_ids=True)
    shared = next(i for i, (a, b) in enumerate(zip(first.prompt_token_ids, both.prompt_token_ids)) if a != b)
    cached = both.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached <= shared  # the first chunk's KV (whole blocks of it) was reused
    assert shared > first.usage.prompt_tokens - 16  # ...and the shared part is that whole first video item
