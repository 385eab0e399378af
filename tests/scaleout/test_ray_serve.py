"""Issue 7: two plugin-enabled vLLM replicas behind Ray Serve (``python -m vllm_vtprune.serve``).

One local Ray cluster, started and torn down by the ``ray_serve_app`` fixture. Every response names the
replica that served it (``x-vtprune-replica``), which is how stickiness is checked directly.
"""

from __future__ import annotations

import math
import re
import urllib.request
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from openai import OpenAI
from transformers import AutoConfig

from vllm_vtprune.core import PruneConfig, total_budget
from vllm_vtprune.serve.routing import REPLICA_HEADER, STREAM_HEADER, STREAM_KEY_HEADER
from vllm_vtprune.testing.videos import make_frames, mp4_data_url, write_mp4

# Issue 5's per-request switch for the exact per-slice tower cache, and its metric on /metrics.
SLICE_CACHE_REQUEST = {"slice_cache": True}
SLICE_CACHE_HITS = "vtprune:slice_cache_hits_total"
ACTIVE = re.compile(r"\(ServeReplica:\w+:VllmReplica pid=(\d+)\).*vtprune active in process (\S+) \(pid (\d+)\)")


class Client:
    def __init__(self, url: str, model: str):
        self.url, self.model = url, model
        self.openai = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)

    def ask(self, videos: list[Path] = (), text: str = "What happens?", *, vtprune: dict | None = None,
            headers: dict | None = None, max_tokens: int = 4, **extra_body):
        """(reply, replica id, stream key the ingress saw) of one greedy chat request."""
        content = [{"type": "video_url", "video_url": {"url": mp4_data_url(v)}} for v in videos]
        content.append({"type": "text", "text": text})
        if vtprune is not None:
            extra_body["mm_processor_kwargs"] = {"vtprune": vtprune}
        raw = self.openai.chat.completions.with_raw_response.create(
            model=self.model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens,
            temperature=0.0, extra_body=extra_body or None, extra_headers=headers)
        return raw.parse(), raw.headers[REPLICA_HEADER], raw.headers.get(STREAM_KEY_HEADER)

    def metrics(self, stream_id: str | None = None) -> tuple[str, str]:
        """(/metrics text, replica id) of the replica that ``stream_id`` maps to (any replica without one)."""
        request = urllib.request.Request(f"{self.url}/metrics", headers={STREAM_HEADER: stream_id} if stream_id else {})
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.read().decode(), r.headers[REPLICA_HEADER]


@pytest.fixture(scope="module")
def client(ray_serve_app, tiny_model) -> Client:
    return Client(ray_serve_app.url, tiny_model)


@pytest.fixture(scope="module")
def growing_clips(tmp_path_factory):
    """``growing_clips(seed)``: a growing video, turn k sends frames 0..4k as its own mp4 (2 fps, so the
    processor keeps every frame; a prefix of a longer clip decodes to the same frames)."""
    out = tmp_path_factory.mktemp("growing")

    def clips(seed: int) -> list[Path]:
        frames = make_frames("moving_objects", 16, 256, 256, seed=seed)
        return [write_mp4(frames[:n], out / f"grow_s{seed}_{n}.mp4", fps=2.0) for n in (4, 8, 12, 16)]

    return clips


def test_plugin_is_active_in_both_replicas_and_their_engines(ray_serve_app, client):
    client.ask()  # both replicas are up (the fixture waited for one)
    processes: dict[str, set[str]] = defaultdict(set)
    for line in ray_serve_app.log().splitlines():
        if m := ACTIVE.search(line):
            processes[m.group(1)].add(m.group(2))
    assert len(processes) == 2, dict(processes)
    for names in processes.values():  # each replica: its API-server process, engine core and worker
        assert {"MainProcess", "EngineCore"} <= names and any("Worker" in n for n in names), dict(processes)


def test_a_growing_video_session_stays_on_one_replica(client, growing_clips):
    for stream in ("camera-1", "camera-2"):
        replicas = set()
        previous = 0
        for clip in growing_clips(seed=7):
            reply, replica, key = client.ask([clip], vtprune={"method": "stc", "retention": 0.3, "stream_id": stream})
            assert key == stream and reply.choices[0].finish_reason == "length"
            assert reply.usage.prompt_tokens > previous  # the video really grows
            previous = reply.usage.prompt_tokens
            replicas.add(replica)
        assert len(replicas) == 1, (stream, replicas)


def test_streams_are_spread_over_both_replicas_and_each_sticks_to_its_own(client):
    served = {f"stream-{i}": client.ask(vtprune={"stream_id": f"stream-{i}"}, max_tokens=1)[1] for i in range(16)}
    assert len(set(served.values())) == 2, Counter(served.values())  # all 16 on one replica: P = 2**-15
    for stream, replica in served.items():
        assert client.ask(vtprune={"stream_id": stream}, max_tokens=1)[1] == replica
        # the header is the same routing key, without touching the body
        assert client.ask(headers={STREAM_HEADER: stream}, max_tokens=1)[1] == replica


def test_a_burst_of_concurrent_requests_of_one_stream_lands_on_one_replica(client):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: client.ask(text=f"question {i}", vtprune={"stream_id": "burst"},
                                                     max_tokens=2), range(16)))
    assert all(reply.choices[0].finish_reason == "length" for reply, _, _ in results)
    assert len({replica for _, replica, _ in results}) == 1


def test_requests_without_a_stream_id_work_on_any_replica(client, videos, tiny_model):
    reply, _, key = client.ask([videos["moving_objects"]], vtprune={"method": "none"}, return_token_ids=True)
    assert key is None and reply.choices[0].finish_reason == "length"
    # exact budget through Ray Serve: the replica's processor and worker both run the plugin
    pad = AutoConfig.from_pretrained(tiny_model).video_token_id
    marks = "".join("p" if token == pad else "." for token in reply.prompt_token_ids)
    runs = [len(m.group(0)) for m in re.finditer(r"p+", marks)]  # one run of H'*W' pads per temporal slice
    t, side = len(runs), math.isqrt(runs[0])
    assert len(set(runs)) == 1 and side * side == runs[0]
    config = {"method": "vcast", "retention": 0.25}
    pruned, _, _ = client.ask([videos["moving_objects"]], vtprune=config)
    assert pruned.usage.prompt_tokens == (reply.usage.prompt_tokens - t * side * side
                                          + total_budget((t, side, side), PruneConfig.from_dict(config)))
    seen = Counter(client.ask(max_tokens=1)[1] for _ in range(16))
    assert len(seen) == 2, seen  # the default policy spreads them (all 16 on one replica: P = 2**-15)


def test_a_growing_session_hits_its_replicas_slice_cache_on_every_turn_after_the_first(client, growing_clips):
    text, _ = client.metrics("cache-stream")
    assert SLICE_CACHE_HITS in text
    hits = [_hits(text)]
    for clip in growing_clips(seed=11):  # frames no other test sends: the first turn cannot hit
        _, replica, _ = client.ask([clip], vtprune={"method": "stc", "retention": 0.3, "stream_id": "cache-stream",
                                                   **SLICE_CACHE_REQUEST})
        text, metrics_replica = client.metrics("cache-stream")
        assert metrics_replica == replica  # the metrics really are that replica's
        hits.append(_hits(text))
    gained = [b - a for a, b in zip(hits, hits[1:])]
    assert gained[0] == 0 and all(g > 0 for g in gained[1:]), gained


def _hits(metrics_text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith(SLICE_CACHE_HITS) and not line.startswith("#"))
