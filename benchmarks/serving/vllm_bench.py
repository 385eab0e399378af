"""Reproducing a point with ``vllm bench serve``, and cross-checking this harness against it.

vLLM 0.32.0's ``sharegpt`` dataset reads a JSON list of ``{"conversations": [human, gpt], "video": PATH}``;
``process_video`` turns a local path into a ``file://`` URL, which the server accepts under
``--allowed-local-media-path`` (both servers of this harness set it). ``random-mm`` is not used: its clips
are i.i.d. noise, the worst case for pruning and unlike any real video. ``--extra-body`` carries the
per-request ``vtprune`` override.

``vllm bench serve`` sends ``input_requests[0]`` as a readiness check and as every warm-up request, which
would put that clip in the encoder and prefix caches before it is measured; so the commands here use
``--ready-check-timeout-sec 0 --num-warmups 0`` and expect a server warmed on other clips.

CLI: ``python -m benchmarks.serving.vllm_bench OUT_DIR --config vcast@0.25 --concurrency 4`` writes the clips
and the dataset and prints the two commands.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

from vllm_vtprune.testing.server import vllm_executable

from .media import point_requests
from .plan import VideoSpec

# Fields of vllm bench serve's --save-result JSON shown next to this harness's figures.
FIELDS = ("completed", "total_input_tokens", "request_throughput", "output_throughput", "mean_ttft_ms",
          "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "median_e2el_ms")


def write_dataset(path: Path, requests: list[tuple[Path, str]]) -> Path:
    entries = [{"id": f"vtprune-{i}", "video": str(video.resolve()),
                "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": "unused"}]}
               for i, (video, question) in enumerate(requests)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=1))
    return path


def bench_command(base_url: str, model: str, dataset: Path, num_prompts: int, concurrency: int, output_len: int,
                  vtprune: dict[str, Any] | None, result_dir: Path | None = None,
                  result_filename: str | None = None) -> list[str]:
    cmd = ["vllm", "bench", "serve", "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
           "--base-url", base_url, "--model", model, "--dataset-name", "sharegpt", "--dataset-path", str(dataset),
           "--sharegpt-output-len", str(output_len), "--ignore-eos", "--num-prompts", str(num_prompts),
           "--max-concurrency", str(concurrency), "--request-rate", "inf", "--disable-shuffle",
           "--ready-check-timeout-sec", "0", "--num-warmups", "0",
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99"]
    if vtprune is not None:
        cmd += ["--extra-body", json.dumps({"mm_processor_kwargs": {"vtprune": vtprune}})]
    if result_dir is not None:
        cmd += ["--save-result", "--result-dir", str(result_dir), "--result-filename", result_filename or "result.json"]
    return cmd


def run_bench(cmd: list[str], log: Path, timeout: float = 1800) -> None:
    with open(log, "w") as f:
        subprocess.run([vllm_executable(), *cmd[1:]], stdout=f, stderr=subprocess.STDOUT, check=True, timeout=timeout)


def read_result(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    return {k: data.get(k) for k in FIELDS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a vllm bench serve dataset of the benchmark's clips.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--model", required=True, help="the model path the server was started with")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--config", default="vanilla", help="vanilla, none or METHOD@RETENTION")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--videos", default="32x256x256,16x320x192,24x192x192")
    parser.add_argument("--video-fps", type=float, default=2.0)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--seed-stream", type=int, default=99, help="clip seed family (use a new one per run)")
    args = parser.parse_args(argv)
    specs = [VideoSpec.parse(v, args.video_fps) for v in args.videos.split(",")]
    requests = point_requests(args.out_dir / "media", specs, args.seed_stream, 0, args.concurrency, args.num_prompts)
    dataset = write_dataset(args.out_dir / "dataset.json", requests)
    vtprune = None
    if args.config != "vanilla":
        method, _, retention = args.config.partition("@")
        vtprune = {"method": method, "retention": float(retention or 1.0)}
    print(f"# server (plugin; for vanilla drop --plugin/--vtprune-* and set VLLM_PLUGINS=''):\n"
          f"vllm serve {args.model} --plugin vtprune --vtprune-method none --allowed-local-media-path "
          f"{(args.out_dir / 'media').resolve()} --enable-prompt-tokens-details --mm-processor-cache-gb 0")
    print("# benchmark (warm the server first on other clips):")
    print(shlex.join(bench_command(args.base_url, args.model, dataset, args.num_prompts, args.concurrency,
                                   args.output_len, vtprune)))


def cross_check(servers: dict, settings: Any, plan: list, out_dir: Path) -> list[dict[str, Any]]:
    """Run one point (highest concurrency) through ``vllm bench serve`` and through this harness, on fresh
    clips of the same geometry, for vanilla and the first pruning configuration: the two should agree
    within run-to-run noise. One run each, no repeats: a sanity check, not a result."""
    from .plan import VANILLA_CONFIG
    from .suite import measure

    top = max(p.concurrency for p in plan)
    pruned = [p.config for p in plan if p.concurrency == top and p.config.method not in (None, "none")]
    out = []
    for k, config in enumerate([VANILLA_CONFIG, *pruned[:1]]):
        n = next((p.num_requests for p in plan if p.key == (config.name, top)), 2 * top)
        server = servers[config.server]
        dataset = write_dataset(out_dir / f"dataset-{config.name}.json", settings.requests(900 + 2 * k, 0, top, n))
        name = f"result-{config.name}.json"
        cmd = bench_command(server.url, settings.model, dataset, n, top, settings.output_len, config.vtprune,
                            out_dir, name)
        run_bench(cmd, out_dir / f"bench-{config.name}.log")
        summary, _ = measure(server, settings, config, top, settings.requests(901 + 2 * k, 0, top, n))

        def ms(v: float | None) -> float | None:
            return None if v is None else v * 1e3

        ok = summary["requests"] - summary["errors"]
        harness = {"completed": ok, "total_input_tokens": (summary["prompt_tokens_mean"] or 0) * ok,
                   "request_throughput": summary["request_throughput"],
                   "output_throughput": summary["output_throughput"], "mean_ttft_ms": ms(summary["ttft_mean"]),
                   "median_ttft_ms": ms(summary["ttft_p50"]), "p99_ttft_ms": ms(summary["ttft_p99"]),
                   "median_tpot_ms": ms(summary["tpot_p50"]), "median_e2el_ms": ms(summary["e2el_p50"])}
        out.append({"config": config.name, "concurrency": top, "command": shlex.join(cmd),
                    "vllm_bench": read_result(out_dir / name), "harness": harness})
    return out


if __name__ == "__main__":
    main()
