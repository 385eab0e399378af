"""Issue 11: a soak of the shared plugin server (slice cache on): 8 concurrent sessions x 20 turns, mixed methods
and stream ids, two sessions fighting over one stream id.

Half the sessions resend a growing clip (the slice cache serves the slices already seen), half send a fresh short
clip each turn (every turn runs the tower and the selection). Every request must be answered; the slice cache and
the stream store stay within their budgets (the plugin's own gauges); and after warm-up the server's memory grows
by less than 5 %, not counting what those two bounded stores added. Clips are small, so vLLM's own bounded
multimodal caches (4 GiB by default) add little in this run.

Memory is the anonymous part of the RSS of the server's whole process tree (RSS minus its file-backed and shared
pages): a leak shows there, while the pages of shared libraries come and go with the machine's other jobs (by
hundreds of MiB on the shared CI machine) and would make the check flaky.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import psutil

from vllm_vtprune.testing.hostile import RawChat, metric
from vllm_vtprune.testing.videos import KINDS, make_frames, mp4_data_url, write_mp4

SESSIONS, TURNS, WARM_UP_TURNS = 8, 20, 5
SLICE_CACHE_MB, STREAM_STATE_MB = 256, 64  # plugin_server's --vtprune-slice-cache-mb, and the stream-state default
SETTINGS = [
    {"method": "vcast", "retention": 0.25}, {"method": "stc", "retention": 0.3},
    {"method": "mssavt", "retention": 0.25},
    {"method": "evs", "retention": 0.3}, {"method": "none"}, {"method": "stc", "options": {"strategy": "dual_anchor"}},
    {"method": "vcast", "retention": 0.4, "cacher": {"enabled": True}}, {"method": "mssavt", "slice_cache": False},
]


def tree_anonymous_rss(pid: int) -> int:
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_info()
        except psutil.NoSuchProcess:
            continue
        total += info.rss - info.shared  # Linux: shared = file-backed + shared-memory resident pages
    return total


class Session:
    def __init__(self, index: int, directory: Path, shared_stream: str) -> None:
        self.index = index
        self.growing = index % 2 == 0
        self.stream = shared_stream if index >= SESSIONS - 2 else f"soak-{index}-{uuid.uuid4()}"
        self.directory = directory
        self.frames = make_frames(KINDS[index % len(KINDS)], 4 + 2 * TURNS, 64, 64, seed=index) if self.growing \
            else None
        self.failures: list[str] = []

    def clip(self, turn: int) -> str:
        if self.growing:
            frames = self.frames[: 4 + 2 * turn]
        else:
            frames = make_frames(KINDS[(self.index + turn) % len(KINDS)], 6, 64, 48, seed=1000 * self.index + turn)
        return mp4_data_url(write_mp4(frames, self.directory / f"s{self.index}-t{turn}.mp4", 4.0))

    def run(self, raw: RawChat, turns: range) -> None:
        for turn in turns:
            settings = {**SETTINGS[(self.index + turn) % len(SETTINGS)], "stream_id": self.stream}
            reply = raw.ask([self.clip(turn)], f"Turn {turn}: what changed?", vtprune=settings, max_tokens=3)
            if reply.status != 200 or not reply.body["choices"][0]["finish_reason"]:
                self.failures.append(f"session {self.index} turn {turn} {settings}: {reply.status} {reply.body}")


def run_turns(raw: RawChat, sessions: list[Session], turns: range) -> None:
    threads = [threading.Thread(target=s.run, args=(raw, turns)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def bounded_bytes(raw: RawChat) -> tuple[float, float]:
    text = raw.http.get("/metrics").text
    return metric(text, "vtprune:slice_cache_bytes"), metric(text, "vtprune:stream_state_bytes")


def test_eight_sessions_of_twenty_turns(plugin_server, tiny_model, tmp_path):
    raw = RawChat(plugin_server.url, tiny_model)
    shared_stream = f"soak-shared-{uuid.uuid4()}"
    sessions = [Session(i, tmp_path, shared_stream) for i in range(SESSIONS)]
    try:
        before = raw.http.get("/metrics").text
        run_turns(raw, sessions, range(WARM_UP_TURNS))
        rss_warm, (cache_warm, streams_warm) = tree_anonymous_rss(plugin_server.process.pid), bounded_bytes(raw)
        run_turns(raw, sessions, range(WARM_UP_TURNS, TURNS))
        rss_end, (cache_end, streams_end) = tree_anonymous_rss(plugin_server.process.pid), bounded_bytes(raw)
        text = raw.http.get("/metrics").text
        assert raw.health() == 200
    finally:
        raw.close()
    failures = [f for s in sessions for f in s.failures]
    assert not failures, "\n".join(failures)
    assert 0 < cache_end <= SLICE_CACHE_MB * 2**20
    assert 0 < streams_end <= STREAM_STATE_MB * 2**20
    # The growing clips were served from the cache; no method failed.
    assert metric(text, "vtprune:slice_cache_hits_total") > metric(before, "vtprune:slice_cache_hits_total")
    assert metric(text, "vtprune:selection_fallbacks_total") == metric(before, "vtprune:selection_fallbacks_total")
    grown = (rss_end - rss_warm) - (cache_end - cache_warm) - (streams_end - streams_warm)
    print(f"soak: tree anonymous RSS {rss_warm / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB; slice cache "
          f"{cache_warm / 2**20:.1f} -> {cache_end / 2**20:.1f} MiB; stream state {streams_warm / 2**10:.0f} -> "
          f"{streams_end / 2**10:.0f} KiB; unaccounted growth {grown / 2**20:.1f} MiB")
    assert grown < 0.05 * rss_warm
