"""Issue 7: tensor parallelism (TP=2, vLLM's multiprocess executor) on the 2-core CI machine.

Each rank runs the vision tower and the selection itself; the plugin must be active in both worker processes
and both ranks must keep exactly the same tokens (compared through the selection digest each rank logs at
DEBUG). The prompt-token count is the single-process one: the unpruned count minus the video's tokens plus
the core library's budget, which is what the TP=1 serving tests check too.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import pytest
from transformers import AutoConfig

from vllm_vtprune.core import PruneConfig, total_budget
from vllm_vtprune.testing.chat import VideoChat, output_tokens

ACTIVE = re.compile(r"^\(([\w-]+) pid=(\d+)\).*vtprune active in process (\S+) \(pid (\d+)\)")
DIGEST = re.compile(r"^\(([\w-]+) pid=(\d+)\).*vtprune: rank (\d+), .*selection digest ([0-9a-f]+)")
CONFIGS = [{"method": "vcast", "retention": 0.25}, {"method": "stc", "retention": 0.3},
           {"method": "mssavt", "retention": 0.4}, {"method": "evs", "retention": 0.5}]


def video_grid(reply, video_pad_id: int) -> tuple[int, int, int]:
    """(T, H', W') of the one video in an UNPRUNED prompt: T runs of H'*W' video pads."""
    marks = "".join("p" if t == video_pad_id else "." for t in reply.prompt_token_ids)
    runs = [len(m.group(0)) for m in re.finditer(r"p+", marks)]
    assert runs and len(set(runs)) == 1, runs
    side = math.isqrt(runs[0])
    assert side * side == runs[0]
    return len(runs), side, side


@pytest.fixture(scope="module")
def replies(tp2_server, tiny_model, videos):
    """Requests sent one at a time (so each encoder batch is one request), in CONFIGS order."""
    chat = VideoChat(tp2_server.url, tiny_model)
    video = [videos["moving_objects"]]
    unpruned = chat.ask(video, vtprune={"method": "none"}, return_token_ids=True)
    pruned = [chat.ask(video, vtprune=config, max_tokens=4) for config in CONFIGS]
    return unpruned, pruned


def test_plugin_is_active_in_the_api_server_engine_core_and_both_tp_workers(tp2_server):
    processes = {}
    for line in tp2_server.log_path.read_text(errors="replace").splitlines():
        if m := ACTIVE.match(line):
            processes[m.group(3)] = m.group(4)
    workers = {name: pid for name, pid in processes.items() if "Worker" in name}
    assert len(workers) == 2, processes  # one per rank, e.g. VllmWorker-0 and VllmWorker-1
    assert {"MainProcess", "EngineCore"} <= processes.keys(), processes
    assert len(set(processes.values())) == len(processes)  # distinct processes


def test_every_rank_selects_exactly_the_same_tokens(tp2_server, replies):
    by_rank: dict[int, list[str]] = defaultdict(list)
    for line in tp2_server.log_path.read_text(errors="replace").splitlines():
        if m := DIGEST.match(line):
            by_rank[int(m.group(3))].append(m.group(4))
    assert sorted(by_rank) == [0, 1], dict(by_rank)
    assert len(by_rank[0]) >= 1 + len(CONFIGS)  # the unpruned request and each pruned one (plus profiling)
    assert by_rank[0] == by_rank[1]
    assert len(set(by_rank[0][-len(CONFIGS):])) == len(CONFIGS)  # the digests really tell selections apart


def test_prompt_tokens_equal_the_single_process_count(replies, tiny_model):
    unpruned, pruned = replies
    grid = video_grid(unpruned, AutoConfig.from_pretrained(tiny_model).video_token_id)
    t, h, w = grid
    for config, reply in zip(CONFIGS, pruned):
        budget = total_budget(grid, PruneConfig.from_dict(config))
        assert budget < t * h * w
        assert reply.usage.prompt_tokens == unpruned.usage.prompt_tokens - t * h * w + budget, config
        assert reply.choices[0].finish_reason == "length" and len(output_tokens(reply)) == 4
