"""``python -m benchmarks.serving``: start vanilla and plugin servers side by side, run the sweeps, write
JSON, markdown and PNGs to ``--out`` and (unless ``--no-publish``) the latest copy to ``benchmarks/results/``
and ``benchmarks/RESULTS.md``.

The defaults are sized for the 2-core CPU development machine (about 25 minutes with the scaled random
Qwen3-VL); widen them with flags, e.g. on a GPU with a real checkpoint:
``python -m benchmarks.serving --model Qwen/Qwen3-VL-8B-Instruct --concurrency 1,2,4,8,16,32
--videos 64x448x448,32x640x360 --server-args "--gpu-memory-utilization 0.9"``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from vllm_vtprune.testing.tiny_qwen3vl import build_tiny_qwen3vl
from vllm_vtprune.testing.videos import KINDS

from . import environment, plots, report
from .plan import PLUGIN, VideoSpec, build_plan, parse_config, requests_per_point
from .servers import ServerSpec, common_args, parse_extra, server_specs, side_by_side
from .streaming import StreamSettings, run_streaming
from .suite import SuiteSettings, prepare_media, run_suite, warm_up
from .vllm_bench import cross_check

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / ".artifacts"
PUBLISH_DIR = REPO / "benchmarks" / "results"
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
BUILTIN_MODELS = ("scaled", "tiny")
STREAM_CONFIGS = ("none", "vcast@0.25", "novelty@0.25", "none+slice-cache", "vcast@0.25+slice-cache")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="scaled", help="'scaled' or 'tiny' (built-in random Qwen3-VL, built on the "
                   "fly) or any model path / hub id vLLM can serve")
    p.add_argument("--scenario", choices=("serving", "streaming", "all"), default="all")
    p.add_argument("--methods", default="vcast,stc,mssavt,evs,novelty",
                   help="pruning methods (comma-separated); a pre-tower method (novelty, dedup) runs alone before "
                        "the tower, which then runs on the kept tokens only")
    p.add_argument("--retentions", default="0.5,0.25,0.15", help="retention sweep (at the lowest concurrency); "
                   "the plugin's `none` configuration is every method's retention-1.0 point")
    p.add_argument("--concurrency", default="1,2,4,8,16",
                   help="concurrency sweep (32 fits the 2-core machine too, at ~+60 %% wall time)")
    p.add_argument("--sweep-retention", type=float, default=0.25, help="retention of the concurrency sweep")
    p.add_argument("--videos", default="32x256x256,16x320x192,24x192x192",
                   help="request clips FRAMESxWIDTHxHEIGHT, rotated per request")
    p.add_argument("--video-fps", type=float, default=2.0)
    p.add_argument("--output-len", type=int, default=16, help="fixed output tokens per request")
    p.add_argument("--repeats", type=int, default=3, help="repeats per point (medians reported)")
    p.add_argument("--waves", type=int, default=2, help="requests per point = max(#videos, waves x concurrency)")
    p.add_argument("--shared-videos", action="store_true",
                   help="send byte-identical clips to every configuration (see benchmarks/serving/media.py)")
    p.add_argument("--extra-config", action="append", default=[],
                   help="another plugin configuration for both sweeps: METHOD@RETENTION or NAME=JSON (a full "
                        "per-request vtprune override, e.g. 'vcast+cacher={\"method\": \"vcast\", \"retention\": "
                        "0.25, \"cacher\": {...}, \"slice_cache\": false}'); repeatable")
    p.add_argument("--plugin-args", default="--plugin vtprune --vtprune-method none --vtprune-slice-cache-mb 256 "
                                            "--vtprune-request-overrides any",
                   help="plugin server flags; settings are chosen per request (which needs "
                        "`--vtprune-request-overrides any`), so keep the method `none`; the slice-cache budget serves "
                        "the streaming benchmark (the serving sweep turns it off per request)")
    p.add_argument("--server-args", default="",
                   help="extra flags for every server, e.g. '--gpu-memory-utilization 0.9'")
    p.add_argument("--stream-mode", default="grow,chunks",
                   help="client patterns, comma-separated: grow (resend the growing clip), chunks (each turn's new "
                        "seconds as their own video item); see benchmarks/serving/streaming.py")
    p.add_argument("--stream-turns", type=int, default=10)
    p.add_argument("--stream-seconds", type=float, default=6.0, help="seconds of video between questions")
    p.add_argument("--stream-size", default="256x256")
    p.add_argument("--stream-sessions", type=int, default=2)
    p.add_argument("--stream-output-len", type=int, default=16)
    p.add_argument("--stream-config", action="append", default=None,
                   help="plugin configuration of the streaming benchmark: none or METHOD@RETENTION, either with "
                        "+slice-cache, or NAME=JSON (a per-request vtprune override); repeatable; default: "
                        + ", ".join(STREAM_CONFIGS))
    p.add_argument("--stream-plugin-args", default=None,
                   help="start a separate plugin server with these flags for the streaming benchmark "
                        "(e.g. to turn on the slice cache); default: reuse the serving plugin server")
    p.add_argument("--vllm-bench-check", action="store_true",
                   help="also run one point through `vllm bench serve` and compare")
    p.add_argument("--out", type=Path, default=None, help="output dir (default .artifacts/bench/<timestamp>)")
    p.add_argument("--media-dir", type=Path, default=ARTIFACTS / "bench" / "media")
    p.add_argument("--no-publish", action="store_true", help="do not copy results to benchmarks/results/")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def resolve_model(name: str) -> tuple[str, bool]:
    if name in BUILTIN_MODELS:
        return str(build_tiny_qwen3vl(ARTIFACTS / name, size=name)), True
    return name, False


def notes(result: dict[str, Any]) -> list[str]:
    out = [
        ("Plugin configurations share one plugin server (`--vtprune-method none`) and pick method and retention "
        "per request (`mm_processor_kwargs.vtprune`), which the plugin merges exactly like server flags; "
        "vanilla runs at the same time on its own server with `VLLM_PLUGINS=''`. Each repeat visits every point "
        "once, odd repeats in reverse order."),
        ("The serving sweep sends `slice_cache: false` with every plugin request (the slice cache is off by "
         "default for users; the plugin server has a budget only for the streaming benchmark). Both servers run "
         "with `--mm-processor-cache-gb 0`: every clip is unique, so vLLM's processor cache could never hit "
         "and would only grow RSS with the number of requests a server has seen."),
        ("Tower and selection times are `/metrics` deltas of `vtprune:vision_tower_seconds` and "
        "`vtprune:selection_seconds`. Vanilla exports neither, so those ratios are to the plugin's `none` "
        "configuration (same stock tower, no pruning)."),
        ("Each request sends its own clip (no cache can carry work between requests or configurations); all "
        "configurations get the same sequence of kinds, lengths and resolutions, so token counts are identical."),
        ("p99 over a handful of requests per point is close to the maximum. Peak RSS sums the server's processes; "
        "on the shared plugin server it is a high-water mark over everything that ran before. On CPU the KV "
        "cache is preallocated (`VLLM_CPU_KVCACHE_SPACE`), so pruning cannot lower that part."),
    ]
    serving = result.get("serving") or []
    if any((r["median"].get("cached_tokens_total") or 0) > 0 for r in serving):
        out.append("WARNING: some serving points had prefix-cache hits (cached_tokens > 0); see the JSON.")
    if any((r["median"].get("slice_cache_hits") or 0) > 0 for r in serving):
        out.append("WARNING: slice-cache hits during the serving sweep: tower times include cross-request reuse.")
    errors = sum(r["median"]["errors"] for r in [*serving, *(result.get("streaming") or [])])
    if errors:
        out.append(f"WARNING: {errors} requests failed; see `first_error` in the JSON.")
    return out


def write_outputs(result: dict[str, Any], out: Path, publish: bool) -> None:
    made = []
    if result.get("serving"):
        made += [plots.concurrency_plot(result["serving"], out / "throughput_vs_concurrency.png"),
                 plots.retention_plot(result["serving"], out / "ttft_vs_retention.png"),
                 plots.stage_plot(result["serving"], out / "stage_breakdown.png")]
    if result.get("streaming"):
        made.append(plots.streaming_plot(result["streaming"], out / "streaming_session.png"))
    result["plots"] = [p.name for p in made if p is not None]
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "results.md").write_text(report.markdown(result))
    if not publish:
        return
    PUBLISH_DIR.mkdir(parents=True, exist_ok=True)
    for old in PUBLISH_DIR.glob("*.png"):
        old.unlink()
    for name in ["results.json", "results.md", *result["plots"]]:
        shutil.copy2(out / name, PUBLISH_DIR / name)
    RESULTS_MD.write_text(
        "# Benchmark results\n\nLatest run of the benchmark suite (`benchmarks/serving`), written by the run "
        "itself. Raw numbers: [results/results.json](results/results.json). Reproduce with the command below "
        "(`make bench` runs the default suite); to reproduce one point with `vllm bench serve`, run "
        "`python -m benchmarks.serving.vllm_bench --help`.\n\n" + report.markdown(result, image_prefix="results/"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.monotonic()
    out = args.out or ARTIFACTS / "bench" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    model, builtin = resolve_model(args.model)
    specs = [VideoSpec.parse(v, args.video_fps) for v in args.videos.split(",")]
    concurrencies = _ints(args.concurrency)
    serving = args.scenario in ("serving", "all")
    streaming = args.scenario in ("streaming", "all")
    plan = build_plan([m for m in args.methods.split(",") if m], _floats(args.retentions), concurrencies,
                      args.sweep_retention, len(specs), args.waves,
                      [parse_config(c) for c in args.extra_config]) if serving else []
    settings = SuiteSettings(model, specs, args.media_dir, args.output_len, args.repeats, args.shared_videos)
    width, height = (int(v) for v in args.stream_size.split("x"))
    modes = [m for m in args.stream_mode.split(",") if m]
    if not modes or set(modes) - {"grow", "chunks"}:
        raise SystemExit(f"--stream-mode: comma-separated grow and/or chunks, got {args.stream_mode!r}")
    stream = StreamSettings(turns=args.stream_turns, seconds_per_turn=args.stream_seconds, fps=args.video_fps,
                            width=width, height=height, sessions=args.stream_sessions,
                            output_len=args.stream_output_len)
    stream_server = "plugin-stream" if args.stream_plugin_args else PLUGIN
    stream_configs = [parse_config(c, stream_server) for c in args.stream_config or STREAM_CONFIGS]

    print(f"preparing clips in {args.media_dir} ...", flush=True)
    clips = prepare_media(settings, plan, ["vanilla", PLUGIN]) if serving else 0
    max_videos = max(2, args.stream_turns if "chunks" in modes and streaming else 1)
    common = common_args(builtin, max_videos, args.media_dir, parse_extra(args.server_args))
    specs_by_name = server_specs(common, parse_extra(args.plugin_args))
    if args.stream_plugin_args and streaming:
        specs_by_name[stream_server] = ServerSpec(stream_server, [*parse_extra(args.stream_plugin_args), *common])
    print(f"{len(plan)} points x {args.repeats} repeats, {clips} clips; starting {len(specs_by_name)} servers "
          f"side by side (logs in {out})", flush=True)
    result: dict[str, Any] = {
        "command": "python -m benchmarks.serving " + shlex.join(sys.argv[1:] if argv is None else argv),
        "started": datetime.now().isoformat(timespec="seconds"), "machine": environment.machine(),
        "software": environment.software(), "model": environment.model_summary(model),
        "servers": {name: s.command(model) for name, s in specs_by_name.items()},
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "requests_per_point": {c: requests_per_point(c, len(specs), args.waves) for c in concurrencies}},
        "videos": {"specs": [{**s.to_dict(), "label": s.label} for s in specs], "kinds": list(KINDS),
                   "note": "one unique clip per request (see Notes)."},
    }
    with side_by_side(model, specs_by_name, out / "logs") as servers:
        print(f"servers ready after {time.monotonic() - started:.0f} s", flush=True)
        if serving:
            result["idle_rss_mib_after_warm_up"], prompt_tokens = warm_up(servers, settings, plan)
            for spec_dict, tokens in zip(result["videos"]["specs"], prompt_tokens):
                spec_dict["prompt_tokens"] = tokens
            result["serving"] = run_suite(servers, settings, plan, progress=not args.no_progress)
        if streaming:
            result["streaming_settings"] = {**stream.to_dict(), "mode": modes}
            result["streaming"] = [row for mode in modes for row in run_streaming(
                servers, model, stream_configs, args.media_dir, dataclasses.replace(stream, mode=mode),
                progress=not args.no_progress)]
        if args.vllm_bench_check and serving:
            result["vllm_bench_check"] = cross_check(servers, settings, plan, out / "vllm_bench")
    result["wall_seconds"] = time.monotonic() - started
    result["load_average_end"] = os.getloadavg()
    result["notes"] = notes(result)
    write_outputs(result, out, publish=not args.no_publish)
    print(report.markdown(result))
    print(f"results: {out}" + ("" if args.no_publish else f" (published to {PUBLISH_DIR})"))
    return result
