"""Streaming-session benchmark: a video that grows while a user asks a question every few seconds of it.

Two client patterns (``--stream-mode``, both by default, each against vanilla in the same mode):

- ``grow``: each turn resends the whole video so far (frames 0..N, then 0..N+k) with a new question. vLLM
  hashes the whole clip, so neither its encoder cache nor its prefix cache helps past the first turn; a
  per-slice tower cache (the plugin's slice cache) can, and pruning shrinks every prefill.
- ``chunks``: each turn appends only the new seconds as their own video item to the conversation, so
  earlier turns' KV blocks are prefix-cache hits on any server and each turn computes only its own chunk
  (tower and prefill); the plugin prunes each chunk.

Why ``grow`` cannot reuse prefix KV, not even for methods whose selection of a slice depends only on that slice
and earlier ones (STC with its memory, EVS, the temporal stages), is written down in ``docs/streaming.md``.

Reported per configuration (medians over sessions): per-turn TTFT, total tower time (``/metrics`` delta),
slice-cache hits, prompt tokens, and prompt tokens actually computed = ``prompt_tokens -
usage.prompt_tokens_details.cached_tokens`` (the servers run with ``--enable-prompt-tokens-details``).
Default configurations: pruning off and on, each without and with the slice cache (``+slice-cache``).
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI
from tqdm import tqdm

from vllm_vtprune.testing.server import VllmServer
from vllm_vtprune.testing.videos import make_frames, mp4_data_url, write_mp4

from .client import chat, video_message
from .plan import VANILLA_CONFIG, Config
from .prom import Snapshot, deltas

QUESTIONS = ("What is happening now?", "What moved since the last question?", "Describe the scene.",
             "Where are the objects?", "Is anything new in the video?", "Summarize the video so far.",
             "What changed?", "Which object is largest?", "Is the camera moving?", "What happens next?")


# Clip seeds per mode: a grow session's first clip must not equal a chunks session's first chunk, or the
# mode that runs second starts with a prefix-cache hit.
SEED_BASE = {"grow": 1000, "chunks": 3000}


@dataclass
class StreamSettings:
    turns: int = 10
    seconds_per_turn: float = 6.0
    fps: float = 2.0
    width: int = 256
    height: int = 256
    kind: str = "moving_objects"
    mode: str = "grow"
    sessions: int = 2
    output_len: int = 16

    @property
    def frames_per_turn(self) -> int:
        """Even, because Qwen3-VL folds 2 frames into one temporal slice."""
        n = max(2, round(self.seconds_per_turn * self.fps))
        return n + n % 2

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "frames_per_turn": self.frames_per_turn}


def session_videos(media_dir: Path, s: StreamSettings, seed: int) -> list[Path]:
    """The clip each turn sends (written once; decoding a prefix of a longer mp4v file gives bit-identical
    frames, so a growing clip really repeats its earlier frames)."""
    frames = make_frames(s.kind, s.turns * s.frames_per_turn, s.width, s.height, seed)
    paths = []
    for k in range(1, s.turns + 1):
        lo = 0 if s.mode == "grow" else (k - 1) * s.frames_per_turn
        hi = k * s.frames_per_turn
        path = media_dir / f"stream_{s.mode}_{s.kind}_s{seed}_{lo}-{hi}_{s.width}x{s.height}_{s.fps:g}fps.mp4"
        if not path.exists():
            write_mp4(frames[lo:hi], path, s.fps)
        paths.append(path)
    return paths


async def run_session(server: VllmServer, model: str, config: Config, videos: list[Path],
                      s: StreamSettings) -> list[dict[str, Any]]:
    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=3600)
    history: list[dict[str, Any]] = []
    turns = []
    try:
        for k, path in enumerate(videos):
            message = video_message(mp4_data_url(path), QUESTIONS[k % len(QUESTIONS)])
            before = Snapshot.parse(await asyncio.to_thread(server.metrics))
            r = await chat(client, model, [*history, message], s.output_len, config.vtprune)
            await asyncio.sleep(0.2)
            d = deltas(before, Snapshot.parse(await asyncio.to_thread(server.metrics)))
            computed = None if r.prompt_tokens is None else r.prompt_tokens - (r.cached_tokens or 0)
            turns.append({"turn": k + 1, "video_seconds": (k + 1) * s.frames_per_turn / s.fps, "ok": r.ok,
                          "error": r.error, "ttft": r.ttft, "prompt_tokens": r.prompt_tokens,
                          "cached_tokens": r.cached_tokens, "computed_tokens": computed,
                          "tower_seconds": d["tower_seconds"], "slice_cache_hits": d["slice_cache_hits"],
                          "slice_cache_misses": d["slice_cache_misses"]})
            if s.mode == "chunks":
                history += [message, {"role": "assistant", "content": r.text}]
    finally:
        await client.close()
    return turns


def _total(turns: list[dict[str, Any]], key: str) -> float | None:
    values = [t[key] for t in turns if t[key] is not None]
    return sum(values) if len(values) == len(turns) else None


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(config: Config, mode: str, sessions: list[list[dict[str, Any]]]) -> dict[str, Any]:
    totals = [{"ttft_total": _total(t, "ttft"), "tower_seconds_total": _total(t, "tower_seconds"),
               "prompt_tokens_total": _total(t, "prompt_tokens"), "computed_tokens_total": _total(t, "computed_tokens"),
               "slice_cache_hits_total": _total(t, "slice_cache_hits"), "errors": sum(not x["ok"] for x in t)}
              for t in sessions]
    per_turn = [{key: _median([s[i][key] for s in sessions]) for key in
                 ("ttft", "prompt_tokens", "computed_tokens", "tower_seconds")} | {"turn": i + 1}
                for i in range(len(sessions[0]))]
    median = {key: _median([t[key] for t in totals]) for key in totals[0] if key != "errors"}
    median["errors"] = sum(t["errors"] for t in totals)
    return {"config": config.to_dict(), "mode": mode, "median": median, "per_turn": per_turn,
            "sessions": sessions}


def run_streaming(servers: dict[str, VllmServer], model: str, configs: list[Config], media_dir: Path,
                  s: StreamSettings, progress: bool = True) -> list[dict[str, Any]]:
    """Vanilla first, then each plugin configuration; one warm-up session per server is excluded; sessions
    alternate between configurations so drift affects all alike."""
    configs = [VANILLA_CONFIG, *configs]
    for name in {c.server for c in configs}:
        warm = session_videos(media_dir, StreamSettings(**{**s.__dict__, "turns": 2}), seed=999)
        base = next(c for c in configs if c.server == name)
        asyncio.run(run_session(servers[name], model, base, warm, StreamSettings(**{**s.__dict__, "turns": 2})))
    sessions: dict[str, list] = {c.name: [] for c in configs}
    with tqdm(total=s.sessions * len(configs), desc="streaming sessions", unit="session", disable=not progress) as bar:
        for rep in range(s.sessions):
            for config in configs if rep % 2 == 0 else reversed(configs):
                bar.set_postfix_str(f"session {rep + 1}/{s.sessions} {config.name}")
                # Own clips per configuration (same kind and geometry): a content-keyed cache on a shared
                # server must not carry one configuration's tower work into another's.
                videos = session_videos(media_dir, s, seed=SEED_BASE[s.mode] + 100 * rep + configs.index(config))
                sessions[config.name].append(asyncio.run(run_session(servers[config.server], model, config, videos, s)))
                bar.update()
    rows = [summarize(c, s.mode, sessions[c.name]) for c in configs]
    ref = {"vanilla": rows[0]["median"],
           "none": next((r["median"] for r in rows if r["config"]["name"] == "none"), None)}
    for row in rows:
        row["ratio"] = {}
        for key, value in row["median"].items():
            base = (ref["none"] if key.startswith(("tower", "slice")) else ref["vanilla"]) or {}
            b = base.get(key)
            row["ratio"][key] = value / b if isinstance(value, (int, float)) and b else None
    return rows
