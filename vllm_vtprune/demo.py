"""The README's demo: build the tiny Qwen3-VL and a generated video, serve it with ``--plugin vtprune``,
ask about the video through the OpenAI client, and show what pruning did.

``python -m vllm_vtprune.demo [--preset vcast] [--video moving_objects]``
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from vllm_vtprune.settings import preset_names
from vllm_vtprune.testing.chat import VideoChat
from vllm_vtprune.testing.server import TINY_ARGS, VllmServer
from vllm_vtprune.testing.tiny_qwen3vl import build_tiny_qwen3vl
from vllm_vtprune.testing.videos import video_suite

ARTIFACTS = Path(".artifacts")


def metric_sum(metrics: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", metrics, re.M))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="vcast", choices=preset_names())
    parser.add_argument("--video", default="moving_objects")
    args = parser.parse_args()

    model = str(build_tiny_qwen3vl(ARTIFACTS / "tiny"))
    video = video_suite(ARTIFACTS / "videos")[args.video]
    # The demo asks the same server for the unpruned prompt too, a request that raises its cost, which the
    # default policy (lower-cost) refuses: this server lets requests change anything.
    command = ["--plugin", "vtprune", "--vtprune-preset", args.preset, "--vtprune-request-overrides", "any",
               *TINY_ARGS]
    print(f"$ vllm serve {model} {' '.join(command)}")
    started = time.monotonic()
    with VllmServer(model, command, log_path=ARTIFACTS / "demo-server.log") as server:
        print(f"server ready in {time.monotonic() - started:.0f} s at {server.url} (log: {ARTIFACTS}/demo-server.log)")
        chat = VideoChat(server.url, model)
        question = "What moves in this video?"
        pruned = chat.ask([video], question, max_tokens=16)
        metrics = server.metrics()
        unpruned = chat.ask([video], question, max_tokens=16, vtprune={"method": "none"})
        print(f"\nvideo: {video.name} | question: {question!r}")
        print(f"answer (random tiny model, so not meaningful): {pruned.choices[0].message.content!r}")
        print(f"prompt tokens: {pruned.usage.prompt_tokens} with --vtprune-preset {args.preset}, "
              f"{unpruned.usage.prompt_tokens} unpruned")
        print(f"video tokens kept: {metric_sum(metrics, 'vtprune:video_tokens_kept_total'):.0f} of "
              f"{metric_sum(metrics, 'vtprune:video_tokens_unpruned_total'):.0f}")
        print(f"vision tower: {metric_sum(metrics, 'vtprune:vision_tower_seconds_sum'):.2f} s, token selection: "
              f"{metric_sum(metrics, 'vtprune:selection_seconds_sum') * 1e3:.1f} ms (from /metrics)")


if __name__ == "__main__":
    main()
