"""The README's demo: serve the committed tiny Qwen3-VL trained on the synthetic video QA
(``models/tiny-videoqa``) with ``--plugin vtprune``, ask it a few questions of the QA set's test split through the
OpenAI client, and show its answers next to the expected ones and what pruning saved.

``python -m vllm_vtprune.demo [--preset vcast] [--questions 5]``
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from vllm_vtprune.settings import preset_names
from vllm_vtprune.testing.chat import VideoChat
from vllm_vtprune.testing.server import VllmServer
from vllm_vtprune.testing.train_tiny import DEFAULT_OUT as TRAINED_TINY
from vllm_vtprune.testing.video_qa import LETTERS, format_prompt, write_qa_set

ARTIFACTS = Path(".artifacts")
# The accuracy harness's flags for the built-in model (benchmarks/serving/servers.py, common_args): the
# checkpoint is bf16, which vLLM runs ~2x slower than float32 on a CPU.
SERVE_ARGS = ("--max-model-len", "8192", "--dtype", "float32", "--enforce-eager",
              "--limit-mm-per-prompt", '{"video": 1, "image": 1}')


def metric_sum(metrics: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", metrics, re.M))


def test_items(media_dir: Path, count: int) -> list[dict]:
    """The first ``count`` items of the QA test split (consecutive seeds cycle through the five families), as
    records of its ``qa.jsonl`` manifest with ``video`` made an absolute path."""
    manifest = write_qa_set(media_dir, "test", count)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    return [r | {"video": manifest.parent / r["video"]} for r in records]


def _option(record: dict, letter: str) -> str:
    index = LETTERS.find(letter) if len(letter) == 1 else -1
    return f"{letter} ({record['options'][index]})" if 0 <= index < len(record["options"]) else repr(letter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="vcast", choices=preset_names())
    parser.add_argument("--questions", type=int, default=5, help="first N items of the test split (5: one per family)")
    args = parser.parse_args()

    if not (TRAINED_TINY / "model.safetensors").is_file():
        raise SystemExit(f"{TRAINED_TINY} is missing: it is committed with the repository; `make train-tiny` "
                         "rebuilds it")
    model = str(TRAINED_TINY)
    items = test_items(ARTIFACTS / "demo" / "media", args.questions)
    # The demo also asks for the unpruned prompt, a request that raises its cost, which the default policy
    # (lower-cost) refuses: this server lets requests change anything.
    command = ["--plugin", "vtprune", "--vtprune-preset", args.preset, "--vtprune-request-overrides", "any",
               *SERVE_ARGS]
    print(f"$ vllm serve {model} {' '.join(command)}")
    started = time.monotonic()
    log = ARTIFACTS / "demo" / "server.log"
    with VllmServer(model, command, log_path=log) as server:
        print(f"server ready in {time.monotonic() - started:.0f} s at {server.url} (log: {log})")
        chat = VideoChat(server.url, model)

        def ask(item: dict, **kw):  # greedy, one token: the answer is a single letter
            return chat.ask([item["video"]], format_prompt(item["question"], item["options"]), max_tokens=1, **kw)

        pruned = [ask(item) for item in items]
        metrics = server.metrics()  # before the unpruned requests: the counters cover the pruned ones only
        unpruned = [ask(item, vtprune={"method": "none"}) for item in items]

    print(f"\n{len(items)} questions of the synthetic video-QA test split; the model never saw these clips")
    right = 0
    for item, p, u in zip(items, pruned, unpruned, strict=True):
        answer = (p.choices[0].message.content or "").strip()
        right += answer == item["answer"]
        print(f"\n[{item['task']}] {item['video'].name}: {item['question']}  "
              + "  ".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(item["options"])))
        print(f"  answer: {_option(item, answer)} | expected: {_option(item, item['answer'])} | "
              f"{'correct' if answer == item['answer'] else 'WRONG'} (unpruned: "
              f"{_option(item, (u.choices[0].message.content or '').strip())})")
        print(f"  prompt tokens: {p.usage.prompt_tokens} with --vtprune-preset {args.preset}, "
              f"{u.usage.prompt_tokens} unpruned")
    print(f"\ncorrect: {right} of {len(items)} with --vtprune-preset {args.preset}")
    print(f"prompt tokens: {sum(p.usage.prompt_tokens for p in pruned)} with --vtprune-preset {args.preset}, "
          f"{sum(u.usage.prompt_tokens for u in unpruned)} unpruned")
    print(f"video tokens kept: {metric_sum(metrics, 'vtprune:video_tokens_kept_total'):.0f} of "
          f"{metric_sum(metrics, 'vtprune:video_tokens_unpruned_total'):.0f}")
    print(f"vision tower: {metric_sum(metrics, 'vtprune:vision_tower_seconds_sum'):.2f} s, token selection: "
          f"{metric_sum(metrics, 'vtprune:selection_seconds_sum') * 1e3:.1f} ms (from /metrics)")


if __name__ == "__main__":
    main()
