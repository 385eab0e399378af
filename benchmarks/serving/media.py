"""Request videos: the project's redundant synthetic clips (never i.i.d. noise), unique per request.

Why unique: vLLM shares vision-tower outputs between requests with the same video (encoder cache) and reuses
KV blocks of identical prompts (prefix cache), and the plugin's slice cache reuses tower outputs of identical
frames. A benchmark that resends one clip measures those caches, not the tower or prefill, and real traffic
(many users, many videos) does not hit them either. So every request gets its own clip: a seed per
configuration, repeat, concurrency and request index. Every configuration gets the same *sequence* of kinds,
lengths and resolutions, so token counts and compute are identical between configurations (tower and LLM
cost depend on geometry and retention, not on pixel values); only the random scene differs. With
``--shared-videos`` every configuration gets byte-identical clips instead (safe only when no content-keyed
cache can carry work between configurations on one server). Clips are deterministic and written once into a
cache directory, then reused by later runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from vllm_vtprune.testing.videos import KINDS, make_frames, write_mp4

from .plan import VideoSpec

QUESTIONS = (
    "Describe the video.",
    "What happens in this video?",
    "Summarize the clip in one sentence.",
    "How many objects are there?",
)


def video_path(cache_dir: Path, spec: VideoSpec, kind: str, seed: int) -> Path:
    """The clip's file, written on first use (atomically, so parallel runs never read half a file)."""
    path = cache_dir / f"{kind}_s{seed}_{spec.frames}f_{spec.width}x{spec.height}_{spec.fps:g}fps.mp4"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{path.stem}.{os.getpid()}.tmp.mp4"
        write_mp4(make_frames(kind, spec.frames, spec.width, spec.height, seed), tmp, spec.fps)
        os.replace(tmp, path)
    return path


def request_seed(stream: int, repeat: int, concurrency: int, index: int) -> int:
    """Unique per (stream = configuration index, repeat, concurrency, request index); repeat -1 is the warm-up."""
    return 10_000_000 * stream + 100_000 * (repeat + 2) + 1_000 * concurrency + index


def point_requests(
    cache_dir: Path, specs: list[VideoSpec], stream: int, repeat: int, concurrency: int, num_requests: int
) -> list[tuple[Path, str]]:
    """(video, question) for each request of a point: specs and kinds rotate, so every point mixes lengths,
    resolutions and kinds of motion in the same way for every configuration."""
    out = []
    for i in range(num_requests):
        spec, kind = specs[i % len(specs)], KINDS[i % len(KINDS)]
        path = video_path(cache_dir, spec, kind, request_seed(stream, repeat, concurrency, i))
        out.append((path, QUESTIONS[i % len(QUESTIONS)]))
    return out
