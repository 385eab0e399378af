"""The serving sweep: every point of the plan, on its server, repeated, warm-up excluded.

Order matters for honesty on a shared machine: each repeat visits every point once (vanilla and plugin
interleaved), and odd repeats go in reverse order, so slow drift (another job starting, the page cache
warming) lands on all configurations alike instead of on whichever ran last. Medians over repeats follow.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vllm_vtprune.testing.server import VllmServer
from vllm_vtprune.testing.videos import mp4_data_url

from .client import closed_loop, video_message
from .media import point_requests
from .memory import PeakSampler, tree_rss
from .plan import NONE_CONFIG, VANILLA, VANILLA_CONFIG, Config, Point, VideoSpec
from .prom import Snapshot, deltas, kv_cache_usage
from .stats import add_ratios, median_over, summarize_point

WARM_UP = -1  # the repeat index of warm-up clips (never measured)


@dataclass
class SuiteSettings:
    model: str
    specs: list[VideoSpec]
    media_dir: Path
    output_len: int
    repeats: int
    shared_videos: bool = False

    def streams(self, plan: list[Point]) -> dict[str, int]:
        """Configuration -> video seed family (see :mod:`.media`); all 0 with ``shared_videos``."""
        names = list(dict.fromkeys(p.config.name for p in plan))
        return {n: 0 if self.shared_videos else i for i, n in enumerate(names)}

    def requests(self, stream: int, repeat: int, concurrency: int, n: int) -> list[tuple[Path, str]]:
        return point_requests(self.media_dir, self.specs, stream, repeat, concurrency, n)


def measure(server: VllmServer, settings: SuiteSettings, config: Config, concurrency: int,
            requests: list[tuple[Path, str]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One repeat of one point: /metrics before and after, peak memory while it runs."""
    conversations = [[video_message(mp4_data_url(path), question)] for path, question in requests]
    before = Snapshot.parse(server.metrics())
    with PeakSampler(server.process.pid, kv_probe=lambda: _kv_usage(server)) as mem:
        results = asyncio.run(closed_loop(server.url, settings.model, conversations, concurrency,
                                          settings.output_len, config.vtprune))
    time.sleep(0.2)  # let the engine's last stats reach the API server's /metrics
    after = Snapshot.parse(server.metrics())
    summary = summarize_point(results, deltas(before, after), mem.peak_rss, mem.peak_gpu)
    summary["peak_kv_cache_usage"] = mem.peak_kv
    return summary, [r.to_dict() for r in results]


def _kv_usage(server: VllmServer) -> float | None:
    try:
        return kv_cache_usage(server.metrics())
    except OSError:
        return None


def warm_up_steps(plan: list[Point], server: str, num_specs: int) -> list[tuple[Config, int, int]]:
    """(configuration, concurrency, requests) sent before measuring on ``server``: every video spec once,
    every configuration once, and one full round at the highest concurrency, so first-call costs
    (allocator growth, lazy imports, a method's first use) are paid before anything is measured."""
    base = VANILLA_CONFIG if server == VANILLA else NONE_CONFIG
    top = max(p.concurrency for p in plan)
    own = list(dict.fromkeys(p.config for p in plan if p.config.server == server))
    return [(base, 1, num_specs), *((c, 1, 1) for c in own), (base, top, top)]


def warm_up(servers: dict[str, VllmServer], settings: SuiteSettings,
            plan: list[Point]) -> tuple[dict[str, float], list[int | None]]:
    """Run :func:`warm_up_steps` on the plan's servers. Returns each server's RSS (MiB) right after, and the
    unpruned prompt tokens of each video spec (the vanilla server's first step: one request per spec)."""
    prompt_tokens: list[int | None] = []
    for name in dict.fromkeys(p.config.server for p in plan):
        server = servers[name]
        for step, (config, concurrency, n) in enumerate(warm_up_steps(plan, name, len(settings.specs))):
            requests = settings.requests(step, WARM_UP, concurrency, n)
            _, results = measure(server, settings, config, concurrency, requests)
            if step == 0 and not prompt_tokens:
                prompt_tokens = [r["prompt_tokens"] for r in results]
    return {name: tree_rss(s.process.pid) / 2**20 for name, s in servers.items()}, prompt_tokens


def prepare_media(settings: SuiteSettings, plan: list[Point], servers: list[str]) -> int:
    """Write every clip the run will send before any server starts, so encoding never overlaps a point."""
    count = 0
    for name in servers:
        for step, (_, concurrency, n) in enumerate(warm_up_steps(plan, name, len(settings.specs))):
            count += len(settings.requests(step, WARM_UP, concurrency, n))
    streams = settings.streams(plan)
    for rep in range(settings.repeats):
        for p in plan:
            count += len(settings.requests(streams[p.config.name], rep, p.concurrency, p.num_requests))
    return count


def run_suite(servers: dict[str, VllmServer], settings: SuiteSettings, plan: list[Point],
              progress: bool = True) -> list[dict[str, Any]]:
    streams = settings.streams(plan)
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {p.key: [] for p in plan}
    raw: dict[tuple[str, int], list[list[dict[str, Any]]]] = {p.key: [] for p in plan}
    with tqdm(total=settings.repeats * len(plan), desc="serving sweep", unit="point", disable=not progress) as bar:
        for rep in range(settings.repeats):
            for point in plan if rep % 2 == 0 else reversed(plan):
                bar.set_postfix_str(f"repeat {rep + 1}/{settings.repeats} {point.config.name} c={point.concurrency}")
                requests = settings.requests(streams[point.config.name], rep, point.concurrency, point.num_requests)
                summary, results = measure(servers[point.config.server], settings, point.config,
                                           point.concurrency, requests)
                runs[point.key].append(summary)
                raw[point.key].append(results)
                bar.update()
    rows = [{"config": p.config.to_dict(), "concurrency": p.concurrency, "sweep": p.sweep,
             "requests_per_repeat": p.num_requests, "video_stream": streams[p.config.name],
             "median": median_over(runs[p.key]), "repeats": runs[p.key], "requests": raw[p.key]} for p in plan]
    add_ratios(rows)
    return rows
