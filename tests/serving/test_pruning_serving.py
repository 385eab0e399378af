"""Issue 4: pruning inside real vLLM serving, through the OpenAI chat API, on the tiny Qwen3-VL.

The expected prompt-token counts come from the unpruned prompt (read back from the server) and the core
library's budget for the video's grid, never from numbers copied out of a run.
"""

from __future__ import annotations

import base64
import math
import re
import threading
import uuid

import cv2
import numpy as np
import pytest
from transformers import AutoConfig

from vllm_vtprune.core import PruneConfig, available_methods, total_budget
from vllm_vtprune.testing.chat import output_tokens
from vllm_vtprune.testing.tiny_qwen3vl import ARCHITECTURES

METHODS = [m for m in ("none", "vcast", "stc", "mssavt", "evs") if m in available_methods()]
ARCHS = tuple(ARCHITECTURES)  # the serving guarantees hold for every architecture (conftest: ``arch``)


@pytest.fixture(scope="module")
def token_ids(tiny_model):
    cfg = AutoConfig.from_pretrained(tiny_model)  # every architecture's tiny checkpoint shares these ids
    return cfg.vision_start_token_id, cfg.video_token_id


def video_grid(reply, token_ids) -> tuple[int, int, int]:
    """(T, H', W') of the one video in an UNPRUNED prompt, from its token ids: T runs of H'*W' pads."""
    _, pad = token_ids
    marks = "".join("p" if t == pad else "." for t in reply.prompt_token_ids)
    runs = [len(m.group(0)) for m in re.finditer(r"p+", marks)]
    assert len(set(runs)) == 1, runs
    side = math.isqrt(runs[0])
    assert side * side == runs[0]  # the generated videos are square
    return len(runs), side, side


def unpruned(chat_client, videos, **kwargs):
    return chat_client.ask(videos, vtprune={"method": "none"}, return_token_ids=True, **kwargs)


@pytest.mark.parametrize("arch", ARCHS, indirect=True)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("retention", [1.0, 0.5, 0.25, 0.1])
def test_prompt_tokens_shrink_exactly_by_the_budget(plugin_server, chat, videos, token_ids, method, retention):
    client = chat(plugin_server)
    base = unpruned(client, [videos["moving_objects"]])
    grid = video_grid(base, token_ids)
    t, h, w = grid
    assert t >= 4 and h * w >= 16  # a real multi-slice video, or the test would prove little
    reply = client.ask([videos["moving_objects"]], vtprune={"method": method, "retention": retention})
    budget = total_budget(grid, PruneConfig.from_dict({"method": method, "retention": retention}))
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens == base.usage.prompt_tokens - t * h * w + budget
    if method != "none" and retention < 1.0:
        assert budget < t * h * w


@pytest.mark.parametrize("pre_tower", ["novelty", "dedup"])
@pytest.mark.parametrize("retention", [0.5, 0.25, 0.1])
@pytest.mark.parametrize("after", [None, "vcast", "stc", "mssavt", "evs"])
def test_pre_tower_and_two_stage_prompt_tokens_are_exact(plugin_server, chat, videos, token_ids, pre_tower,
                                                         retention, after):
    """Decided from the pixels in the API server, the tower runs on the kept tokens only. Alone, the prompt is
    vLLM's own layout with each slice's kept count; with a post-tower method after it (keeping half of what
    the tower computed), the budget of both stages."""
    client = chat(plugin_server)
    base = unpruned(client, [videos["moving_objects"]])
    t, h, w = video_grid(base, token_ids)
    cfg = {"method": after or "none", "pre_tower": {"method": pre_tower, "retention": retention}}
    if after:
        cfg["retention"] = 0.5
    reply = client.ask([videos["moving_objects"]], vtprune=cfg, return_token_ids=True)
    budget = total_budget((t, h, w), PruneConfig.from_dict(cfg))
    assert reply.usage.prompt_tokens == base.usage.prompt_tokens - t * h * w + budget < base.usage.prompt_tokens
    if after is None:
        _, pad = token_ids
        assert sum(tok == pad for tok in reply.prompt_token_ids) == budget  # only kept tokens are pads


@pytest.mark.parametrize("arch", ARCHS, indirect=True)
@pytest.mark.parametrize("vtprune", [{"method": "none"}, {"method": "vcast", "retention": 1.0},
                                     {"method": "stc", "retention": 1.0},
                                     {"method": "none", "pre_tower": {"method": "novelty", "retention": 1.0}}])
def test_full_retention_is_token_identical_to_vanilla(vanilla_server, plugin_server, chat, videos, vtprune):
    """Every token kept: vLLM's own layout, computed exactly as vanilla vLLM does. Both requests are computed
    cold (a fresh cache salt each): a prompt resumed from the prefix cache runs other attention kernels, whose
    rounding differs by up to ~4e-3 in logprob on some CPUs, and earlier tests warm the caches differently."""
    for kind in ("moving_objects", "slow_pan"):
        salt = f"{kind}-{uuid.uuid4()}"
        a = chat(vanilla_server).ask([videos[kind]], max_tokens=16, cache_salt=salt)
        b = chat(plugin_server).ask([videos[kind]], max_tokens=16, vtprune=vtprune, cache_salt=salt)
        assert a.usage.prompt_tokens == b.usage.prompt_tokens
        assert output_tokens(a) == output_tokens(b)
        assert [t.logprob for t in a.choices[0].logprobs.content] == [t.logprob for t in b.choices[0].logprobs.content]


def test_two_videos_and_an_image_in_one_prompt(vanilla_server, plugin_server, chat, videos, token_ids):
    image = cv2.imencode(".png", np.full((64, 96, 3), 120, np.uint8))[1].tobytes()
    images = ["data:image/png;base64," + base64.b64encode(image).decode()]
    pair = [videos["scene_cut"], videos["near_static"]]
    a = chat(vanilla_server).ask(pair, images=images, max_tokens=12)
    b = chat(plugin_server).ask(pair, images=images, max_tokens=12, vtprune={"method": "none"})
    assert (a.usage.prompt_tokens, output_tokens(a)) == (b.usage.prompt_tokens, output_tokens(b))

    base = unpruned(chat(plugin_server), pair, images=images)
    grids = [video_grid(unpruned(chat(plugin_server), [v]), token_ids) for v in pair]
    cfg = PruneConfig.from_dict({"method": "vcast", "retention": 0.3})
    pruned = chat(plugin_server).ask(pair, images=images, vtprune=cfg.to_dict())
    removed = sum(t * h * w - total_budget((t, h, w), cfg) for t, h, w in grids)
    assert pruned.usage.prompt_tokens == base.usage.prompt_tokens - removed  # the image is untouched


@pytest.mark.parametrize("arch", ARCHS, indirect=True)
def test_prefix_cache_hit_on_the_video_gives_the_cold_answer(chunked_server, chat, videos):
    """Same video, new question: the video's KV comes from the prefix cache (EVS bug B3's scenario). At the
    server's retention (0.6) the pruned prompt spans a whole cache block of the hybrid models (256 tokens).
    The answers are the same tokens; logprobs agree to the rounding of cached-context attention kernels (up to
    ~4e-3 seen)."""
    client = chat(chunked_server)
    video = [videos["slow_pan"]]
    cold = client.ask(video, "Describe the motion.", max_tokens=16, cache_salt="cold")
    client.ask(video, "What colour is it?", max_tokens=4, cache_salt="warm")
    warm = client.ask(video, "Describe the motion.", max_tokens=16, cache_salt="warm")
    assert warm.usage.prompt_tokens_details.cached_tokens > 0.5 * warm.usage.prompt_tokens
    assert output_tokens(warm) == output_tokens(cold)
    assert np.allclose([t.logprob for t in warm.choices[0].logprobs.content],
                       [t.logprob for t in cold.choices[0].logprobs.content], atol=1e-2)


# The chunked server lets requests only lower their cost: these keep fewer tokens than its settings.
@pytest.mark.parametrize("arch", ARCHS, indirect=True)
@pytest.mark.parametrize("vtprune", [{"method": "vcast", "retention": 0.25}, {"method": "stc", "retention": 0.2},
                                     {"method": "evs", "retention": 0.2}])
def test_chunked_prefill_that_splits_the_video_gives_the_unsplit_answer(plugin_server, chunked_server, chat,
                                                                         videos, vtprune):
    whole = chat(plugin_server).ask([videos["moving_objects"]], max_tokens=16, vtprune=vtprune)
    split = chat(chunked_server).ask([videos["moving_objects"]], max_tokens=16, vtprune=vtprune)
    assert whole.usage.prompt_tokens > 2 * 64  # the video really spans several 64-token chunks
    assert whole.usage.prompt_tokens == split.usage.prompt_tokens
    assert output_tokens(whole) == output_tokens(split)


def test_mixed_configs_in_one_batch_each_get_their_own_budget(plugin_server, chat, videos, token_ids):
    client = chat(plugin_server)
    base = unpruned(client, [videos["scene_cut"]])
    grid = video_grid(base, token_ids)
    t, h, w = grid
    configs = [{"method": m, "retention": r} for m, r in
               [("vcast", 0.2), ("stc", 0.5), ("evs", 0.3), ("none", 1.0), ("vcast", 0.6), ("stc", 0.15)]]
    replies: dict[int, object] = {}

    def send(i):
        replies[i] = client.ask([videos["scene_cut"]], vtprune=configs[i], max_tokens=4)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(configs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i, cfg in enumerate(configs):
        budget = total_budget(grid, PruneConfig.from_dict(cfg))
        assert replies[i].usage.prompt_tokens == base.usage.prompt_tokens - t * h * w + budget, cfg


@pytest.mark.parametrize("arch", ARCHS, indirect=True)
def test_invalid_request_settings_get_400_and_the_server_lives(plugin_server, chat, videos):
    import openai

    client = chat(plugin_server)
    for bad, message in [({"retention": 0}, "retention"), ({"method": "nope"}, "nope"),
                         ({"options": {"bogus": 1}}, "bogus"), ("vcast", "must be an object"),
                         ({"stream_id": ""}, "stream_id"), ({"retention": 10**400}, "vtprune.retention"),
                         ({"stream_id": "x" * 257}, "stream_id"), (False, "must be an object"),
                         ([], "must be an object"), (0, "must be an object"), ("", "must be an object"),
                         ({"request_overrides": "any"}, "server setting")]:
        with pytest.raises(openai.BadRequestError, match=message):
            client.ask([videos["near_static"]], vtprune=bad)
        with pytest.raises(openai.BadRequestError, match=message):  # the same answer without a video
            client.ask([], vtprune=bad)
    assert client.ask([videos["near_static"]], vtprune=None).choices[0].finish_reason == "length"


def test_by_default_a_request_may_only_lower_its_cost(plugin_server, chunked_server, chat, videos, token_ids):
    """The chunked server runs the default policy with V-CAST at retention 0.6."""
    import openai

    t, h, w = video_grid(unpruned(chat(plugin_server), [videos["moving_objects"]]), token_ids)
    server_keeps = total_budget((t, h, w), PruneConfig.from_dict({"method": "vcast", "retention": 0.6}))
    client = chat(chunked_server)
    for more, message in [({"method": "none"}, f"keep {t * h * w} tokens of this video where this server's "
                                               f"keep {server_keeps};"),
                          ({"retention": 0.7}, "lower-cost"),
                          ({"method": "mssavt", "retention": 0.1, "options": {"mask": "greedy"}}, "mask='greedy'"),
                          ({"slice_cache": False}, "slice_cache=false")]:
        with pytest.raises(openai.BadRequestError, match=message):
            client.ask([videos["moving_objects"]], vtprune=more, max_tokens=1)
    served = client.ask([videos["moving_objects"]], vtprune=None, max_tokens=1)
    fewer = client.ask([videos["moving_objects"]], vtprune={"method": "stc", "retention": 0.1,
                                                               "cacher": {"enabled": True}}, max_tokens=1)
    assert fewer.usage.prompt_tokens < served.usage.prompt_tokens


def _metric(text: str, name: str, method: str) -> float:
    m = re.search(rf'^{re.escape(name)}{{method="{method}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_metrics_show_what_pruning_did(plugin_server, chat, videos, token_ids):
    import openai

    client = chat(plugin_server)
    base = unpruned(client, [videos["near_static"]])
    before = plugin_server.metrics()
    with pytest.raises(openai.BadRequestError):  # refused by vLLM after the video was sized: not counted
        client.ask([videos["near_static"]], "a " * 9000, vtprune={"method": "vcast", "retention": 0.25})
    grid = video_grid(base, token_ids)
    cfg = PruneConfig.from_dict({"method": "vcast", "retention": 0.25})
    client.ask([videos["near_static"]], vtprune=cfg.to_dict())
    after = plugin_server.metrics()
    t, h, w = grid
    assert _metric(after, "vtprune:videos_total", "vcast") - _metric(before, "vtprune:videos_total", "vcast") == 1
    for name, expected in [("vtprune:video_tokens_unpruned_total", t * h * w),
                           ("vtprune:video_tokens_kept_total", total_budget(grid, cfg))]:
        assert _metric(after, name, "vcast") - _metric(before, name, "vcast") == expected
    for histogram in ("vtprune:vision_tower_seconds_count", "vtprune:selection_seconds_count"):
        assert float(re.search(rf"^{histogram} (\S+)$", after, re.M).group(1)) >= 1
