"""Markdown tables from a result dict (the same dict that is written as JSON).

Every figure is printed with its ratio to the reference measured in the same run: ``1.23 (0.56x)``. A ratio
below 1 means smaller than vanilla (good for times and memory, bad for throughput).
"""

from __future__ import annotations

from typing import Any

from .stats import STAGES, losses


def fmt(value: float | None, ratio: float | None = None, digits: int = 2, scale: float = 1.0) -> str:
    if value is None:
        return "n/a"
    text = f"{value * scale:.{digits}f}"
    return text if ratio is None else f"{text} ({ratio:.2f}x)"


def _cell(row: dict[str, Any], key: str, digits: int = 2, scale: float = 1.0, ratio: bool = True) -> str:
    return fmt(row["median"].get(key), row["ratio"].get(key) if ratio else None, digits, scale)


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def retention_table(rows: list[dict[str, Any]]) -> str:
    base = min(r["concurrency"] for r in rows)
    picked = [r for r in rows if r["concurrency"] == base]
    header = ["config", "prompt tok", "kept frac", "TTFT mean s", "TTFT p50 s", "TTFT p99 s", "server prefill s",
              "TPOT p50 ms", "E2E p50 s", "req/s", "tower ms/req", "select ms/req", "peak RSS MiB", "errors"]
    lines = [[r["config"]["name"], _cell(r, "prompt_tokens_mean", 0), _cell(r, "kept_fraction", 3, ratio=False),
              _cell(r, "ttft_mean"), _cell(r, "ttft_p50"), _cell(r, "ttft_p99"), _cell(r, "server_prefill_s_mean"),
              _cell(r, "tpot_p50", 1, 1e3), _cell(r, "e2el_p50"), _cell(r, "request_throughput", 3),
              _cell(r, "tower_ms_per_request", 0), _cell(r, "selection_ms_per_request", 1),
              _cell(r, "peak_rss_mib", 0), str(r["median"]["errors"])] for r in picked]
    return (f"Concurrency {base}. `server prefill` is vLLM's own `request_prefill_time_seconds` (scheduling to "
            "first token, tower included); TTFT minus it is mostly the API server's video decoding and "
            "preprocessing.\n\n" + _table(header, lines))


def concurrency_table(rows: list[dict[str, Any]]) -> str:
    picked = sorted((r for r in rows if r["sweep"] in ("concurrency", "both")),
                    key=lambda r: (r["concurrency"], r["config"]["server"] != "vanilla", r["config"]["name"] != "none"))
    header = ["config", "c", "TTFT p50 s", "TTFT p99 s", "TPOT p50 ms", "E2E p50 s", "E2E p99 s", "req/s",
              "out tok/s", "tower ms/req", "peak KV %", "peak RSS MiB", "errors"]
    lines = [[r["config"]["name"], str(r["concurrency"]), _cell(r, "ttft_p50"), _cell(r, "ttft_p99"),
              _cell(r, "tpot_p50", 1, 1e3), _cell(r, "e2el_p50"), _cell(r, "e2el_p99"),
              _cell(r, "request_throughput", 3), _cell(r, "output_throughput", 1), _cell(r, "tower_ms_per_request", 0),
              _cell(r, "peak_kv_cache_usage", 1, 100), _cell(r, "peak_rss_mib", 0), str(r["median"]["errors"])]
             for r in picked]
    return _table(header, lines)


def stages_table(rows: list[dict[str, Any]]) -> str:
    levels = sorted({r["concurrency"] for r in rows})
    picked = [r for r in rows if r["concurrency"] in (levels[0], levels[-1]) and r["sweep"] in ("concurrency", "both")]
    picked.sort(key=lambda r: (r["concurrency"], r["config"]["server"] != "vanilla", r["config"]["name"] != "none"))
    header = ["config", "c", "API server s", "of it: processor s", "of it: plugin ms", "queue s", "tower s",
              "selection ms", "prefill s", "decode s", "E2E mean s"]
    lines = [[r["config"]["name"], str(r["concurrency"]), _cell(r, "stage_api_server_s"),
              _cell(r, "stage_api_processor_s", ratio=False), _cell(r, "stage_api_plugin_s", 1, 1e3, ratio=False),
              _cell(r, "stage_queue_s"), _cell(r, "stage_tower_s", 3),
              _cell(r, "stage_selection_s", 1, 1e3, ratio=False),
              _cell(r, "stage_prefill_s"), _cell(r, "stage_decode_s"), _cell(r, "e2el_mean")] for r in picked]
    return ("Seconds per request (means; medians over repeats) at the lowest and highest concurrency. `API server` = "
            "TTFT - vLLM's queue and prefill time (request, video decoding, the multimodal processor - of which "
            "`processor` is vLLM's processor call and `plugin` the plugin's share of it -, hand-off); `prefill` "
            "excludes the plugin's `tower` and `selection` (vanilla's includes its tower). Tower and selection ratios "
            "are to `none`. Stages: " + ", ".join(STAGES) + ".\n\n" + _table(header, lines))


def losses_section(rows: list[dict[str, Any]]) -> str:
    found = losses(rows)
    if not found:
        return "No plugin configuration was more than 2 % worse than vanilla on TTFT, TPOT, E2E latency, " \
               "throughput or peak RSS at any measured point."
    def span(r: tuple[float, float] | None) -> str:
        return "n/a" if r is None else f"{r[0]:.3g} - {r[1]:.3g}"

    lines = [[f["config"], str(f["concurrency"]), f["figure"], f"{f['ratio']:.2f}x", span(f["plugin_range"]),
              span(f["vanilla_range"])] for f in found]
    return ("Plugin points more than 2 % worse than vanilla at the same concurrency (ratio = plugin / vanilla "
            "of the medians; for throughput lower is worse, for the others higher is worse). The ranges are "
            "min - max over the repeats: a loss inside both ranges' overlap is within run-to-run noise.\n\n"
            + _table(["config", "c", "figure", "ratio", "plugin range", "vanilla range"], lines))


def streaming_table(rows: list[dict[str, Any]]) -> str:
    header = ["config", "prompt tok (sum)", "computed tok (sum)", "tower s (sum)", "TTFT s (sum)",
              "slice-cache hits", "computed tok per turn", "tower s per turn", "errors"]
    lines = []
    for r in rows:
        per_turn = r["per_turn"]
        lines.append([r["config"]["name"], _cell(r, "prompt_tokens_total", 0), _cell(r, "computed_tokens_total", 0),
                      _cell(r, "tower_seconds_total"), _cell(r, "ttft_total"),
                      _cell(r, "slice_cache_hits_total", 0, ratio=False),
                      ", ".join(fmt(t["computed_tokens"], digits=0) for t in per_turn),
                      ", ".join(fmt(t["tower_seconds"]) for t in per_turn), str(r["median"]["errors"])])
    return _table(header, lines)


def streaming_section(result: dict[str, Any]) -> list[str]:
    st = result["streaming_settings"]
    modes = list(dict.fromkeys(r["mode"] for r in result["streaming"]))
    parts = [(f"{st['turns']} turns, a question every {st['seconds_per_turn']:g} s of video ({st['frames_per_turn']} "
              f"frames, {st['width']}x{st['height']} @ {st['fps']:g} fps, {st['kind']}), {st['output_len']} output "
              f"tokens, median of {st['sessions']} sessions. `grow`: each turn resends the whole clip so far; "
              "`chunks`: each turn adds only its new seconds as another video item of the conversation. Computed = "
              "prompt - prefix-cache hits. Ratios are to vanilla in the same mode; tower ratios to `none` in the same "
              "mode (vanilla exports no tower time; `none` runs the same stock tower).")]
    for mode in modes:
        parts += [f"### Mode `{mode}`", streaming_table([r for r in result["streaming"] if r["mode"] == mode])]
    return parts


def cross_check_section(checks: list[dict[str, Any]]) -> str:
    keys = ("completed", "total_input_tokens", "request_throughput", "median_ttft_ms", "p99_ttft_ms",
            "median_tpot_ms", "median_e2el_ms")
    lines = []
    for c in checks:
        for source in ("vllm_bench", "harness"):
            lines.append([c["config"], str(c["concurrency"]), source.replace("_", " ")]
                         + [fmt(c[source].get(k), digits=3 if k == "request_throughput" else 1) for k in keys])
    commands = "\n".join(f"- `{c['config']}`: `{c['command']}`" for c in checks)
    return ("One run each on fresh clips of the same geometry (a sanity check of this harness, not a result):\n\n"
            + _table(["config", "c", "measured by", *keys], lines) + "\n\nCommands:\n\n" + commands)


def environment_section(result: dict[str, Any]) -> str:
    m, s, model = result["machine"], result["software"], result["model"]
    lines = [
        f"- Machine: {m['cpu_model']}, {m['cpus_usable']} usable CPUs, {m['memory_gib']} GiB RAM"
        + (f", GPUs: {'; '.join(m['gpus'])}" if m["gpus"] else ", no GPU")
        + f"; load average at start {', '.join(f'{x:.2f}' for x in m['load_average'])}"
        + (f", at end {', '.join(f'{x:.2f}' for x in result['load_average_end'])}"
           if result.get("load_average_end") else ""),
        f"- Software: vLLM {s['vllm']}, vllm-vtprune {s['vllm_vtprune']} (git {s['git_commit']}), torch {s['torch']}",
        f"- Model: `{model['path']}`"
        + (f" — text {model.get('text')}, vision {model.get('vision')}" if "text" in model else ""),
    ]
    if result.get("videos"):
        v = result["videos"]
        specs = "; ".join(f"{x['label']} -> {x['prompt_tokens'] if x.get('prompt_tokens') else '?'} prompt tokens"
                          for x in v["specs"])
        lines.append(f"- Videos: {specs}. Kinds rotate over {', '.join(v['kinds'])}; {v['note']}")
    s_ = result["settings"]
    lines.append(f"- Load: output {s_['output_len']} tokens per request (ignore_eos), {s_['repeats']} repeats "
                 f"(medians shown), warm-up excluded, requests per point {s_['requests_per_point']}")
    lines.append(f"- Command: `{result['command']}` ({result['wall_seconds'] / 60:.1f} min wall)")
    for name, cmd in result["servers"].items():
        lines.append(f"- Server `{name}`: `{cmd}`")
    return "\n".join(lines)


def markdown(result: dict[str, Any], image_prefix: str = "") -> str:
    parts = ["## Setup", environment_section(result)]
    if result.get("serving"):
        rows = result["serving"]
        parts += ["## Retention sweep", retention_table(rows),
                  "## Concurrency sweep", concurrency_table(rows),
                  "## Where the time goes", stages_table(rows),
                  "## Where the plugin loses", losses_section(rows)]
    if result.get("streaming"):
        parts += ["## Streaming session", *streaming_section(result)]
    if result.get("vllm_bench_check"):
        parts += ["## Cross-check with `vllm bench serve`", cross_check_section(result["vllm_bench_check"])]
    if result.get("plots"):
        parts += ["## Plots"] + [f"![{name}]({image_prefix}{name})" for name in result["plots"]]
    parts += ["## Notes", "\n".join(f"- {n}" for n in result.get("notes", []))]
    return "\n\n".join(parts) + "\n"
