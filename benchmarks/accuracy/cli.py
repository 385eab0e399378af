"""``python -m benchmarks.accuracy``: accuracy of every pruning method at every retention, against vanilla vLLM.

By default it serves the committed tiny Qwen3-VL trained on the synthetic video QA (``models/tiny-videoqa``)
twice, side by side: vanilla vLLM (``VLLM_PLUGINS=""``) and ``--plugin vtprune --vtprune-method none``, asks
the built-in test questions under every configuration (method and retention chosen per request) and writes
JSON, markdown and a PNG to ``--out`` and (unless ``--no-publish``) to ``benchmarks/results/accuracy/``.

With a real model on a GPU: ``--model Qwen/Qwen3-VL-8B-Instruct --dataset videomme.jsonl --video-transport
file --server-args "--max-model-len 32768"``; or point at servers already running with ``--vanilla-server``
and ``--plugin-server`` (the plugin one started with ``--plugin vtprune``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.serving import environment
from benchmarks.serving.servers import common_args, parse_extra, server_specs, side_by_side
from vllm_vtprune.testing.train_tiny import DEFAULT_OUT as TRAINED_TINY

from . import dataset, plots, report
from .suite import PLUGIN, VANILLA, build_configs, measure

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / ".artifacts"
PUBLISH_DIR = REPO / "benchmarks" / "results" / "accuracy"
PLOT = "accuracy_vs_retention.png"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(TRAINED_TINY), help="model path or hub id (default: the committed "
                   "tiny Qwen3-VL trained on the synthetic QA)")
    p.add_argument("--dataset", type=Path, default=None, help="a VideoMME-style JSON/JSONL file (see "
                   "benchmarks/accuracy/dataset.py); default: the built-in synthetic test split")
    p.add_argument("--count", type=int, default=250, help="built-in questions (5 task families, balanced)")
    p.add_argument("--limit", type=int, default=None, help="ask only the first N questions of --dataset")
    p.add_argument("--methods", default="none,evs,vcast,stc,mssavt,novelty,dedup",
                   help="methods after the tower, and before it (novelty, dedup: the tower runs on kept tokens)")
    p.add_argument("--retentions", default="0.5,0.25,0.15")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight per server")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="default 1 for the built-in set (single-token answers), 16 for --dataset")
    p.add_argument("--video-transport", choices=("data-url", "file"), default="data-url",
                   help="send local videos inline (base64) or as file:// URLs (servers started here get "
                        "--allowed-local-media-path; a running server needs it too)")
    p.add_argument("--vanilla-server", default=None, help="URL of a running vanilla vLLM (not started here)")
    p.add_argument("--plugin-server", default=None, help="URL of a running `vllm serve ... --plugin vtprune`")
    p.add_argument("--no-vanilla", action="store_true", help="skip vanilla (no ratios, no identity check)")
    p.add_argument("--plugin-args", default="--plugin vtprune --vtprune-method none --vtprune-request-overrides any",
                   help="plugin server flags; settings are chosen per request, so keep the method `none`")
    p.add_argument("--server-args", default="", help="extra flags for every server started here")
    p.add_argument("--out", type=Path, default=None, help="output dir (default .artifacts/accuracy/<timestamp>)")
    p.add_argument("--media-dir", type=Path, default=ARTIFACTS / "accuracy" / "media")
    p.add_argument("--no-publish", action="store_true", help="do not copy results to benchmarks/results/accuracy/")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def served_model(url: str) -> str:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as r:
        return json.loads(r.read())["data"][0]["id"]


def _questions(args: argparse.Namespace) -> tuple[list[dataset.Question], str, Path]:
    """The questions, a description of their source, and the folder holding every local video (the started
    servers' ``--allowed-local-media-path``)."""
    if args.dataset is None:
        return dataset.builtin(args.media_dir, args.count), f"built-in synthetic test split, first {args.count}", \
            args.media_dir
    questions = dataset.load_file(args.dataset)[: args.limit]
    local = [q.video for q in questions if "://" not in q.video and not q.video.startswith("data:")]
    root = Path(os.path.commonpath(local)) if local else args.dataset.resolve().parent
    return questions, str(args.dataset), root if root.is_dir() else root.parent


def write_outputs(result: dict[str, Any], out: Path, publish: bool) -> None:
    plot = plots.accuracy_plot(result["rows"], result["tasks"], out / PLOT)
    result["plot"] = plot.name if plot else None
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "results.md").write_text(report.markdown(result))
    if publish:
        PUBLISH_DIR.mkdir(parents=True, exist_ok=True)
        for name in ["results.json", "results.md", *([result["plot"]] if result["plot"] else [])]:
            shutil.copy2(out / name, PUBLISH_DIR / name)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.monotonic()
    out = args.out or ARTIFACTS / "accuracy" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    questions, source, media_root = _questions(args)
    max_tokens = args.max_tokens or (1 if args.dataset is None else 16)
    configs = build_configs([m for m in args.methods.split(",") if m],
                            [float(r) for r in args.retentions.split(",") if r], vanilla=not args.no_vanilla)
    builtin = args.model == str(TRAINED_TINY)
    common = common_args(builtin, 1, media_root, parse_extra(args.server_args))
    wanted = {VANILLA} if not args.no_vanilla else set()
    wanted.add(PLUGIN)
    given = {VANILLA: args.vanilla_server, PLUGIN: args.plugin_server}
    specs = {n: s for n, s in server_specs(common, parse_extra(args.plugin_args)).items()
             if n in wanted and not given[n]}
    print(f"{len(questions)} questions x {len(configs)} configurations; starting {sorted(specs) or 'no'} "
          f"server(s) (logs in {out / 'logs'})", flush=True)
    with side_by_side(args.model, specs, out / "logs") as started_servers:
        urls = {n: given[n] or started_servers[n].url for n in wanted}
        model = served_model(urls[PLUGIN])
        print(f"servers ready after {time.monotonic() - started:.0f} s", flush=True)
        measured = measure(urls, model, questions, configs, concurrency=args.concurrency, max_tokens=max_tokens,
                           transport=args.video_transport, progress=not args.no_progress)
    result = {
        "command": "python -m benchmarks.accuracy " + shlex.join(sys.argv[1:] if argv is None else argv),
        "started": datetime.now().isoformat(timespec="seconds"), "machine": environment.machine(),
        "software": environment.software(), "model": model, "model_summary": environment.model_summary(model),
        "dataset": source, "questions": len(questions),
        "servers": {n: s.command(args.model) for n, s in specs.items()} | {n: u for n, u in given.items() if u},
        "settings": {"max_tokens": max_tokens, "concurrency": args.concurrency,
                     "video_transport": args.video_transport, "configs": [c.name for c in configs]},
        "question_list": [{"id": q.id, "task": q.task, "answer": q.answer} for q in questions],
        **measured,
        "wall_seconds": time.monotonic() - started, "load_average_end": os.getloadavg(),
    }
    write_outputs(result, out, publish=not args.no_publish)
    print(report.markdown(result))
    print(f"results: {out}" + ("" if args.no_publish else f" (published to {PUBLISH_DIR})"))
    return result
