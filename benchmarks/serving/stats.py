"""Per-point figures, medians over repeats, and ratios to vanilla measured in the same run.

Every figure of a point is computed per repeat, then the median over repeats is reported (robust to a
repeat disturbed by another job on the machine). Ratios divide by vanilla at the same concurrency; figures
vanilla cannot produce (it exports no ``vtprune:*`` metrics: tower and selection time, kept fraction,
slice cache) are divided by the plugin's ``none`` configuration instead, which runs the same stock tower.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .client import RequestResult

# Reported by the plugin's /metrics only: their ratios use the "none" configuration as reference.
PLUGIN_ONLY = ("tower_ms_per_request", "selection_ms_per_request", "kept_fraction",
               "slice_cache_hits", "slice_cache_misses", "stage_tower_s", "stage_selection_s",
               "stage_api_processor_s", "stage_api_plugin_s")
# The per-request stages of :func:`stages`, in the order a request passes them.
STAGES = ("api_server", "queue", "tower", "selection", "prefill", "decode")
# name -> True when lower is better (for "where pruning loses").
DIRECTION = {"ttft_p50": True, "ttft_p99": True, "tpot_p50": True, "e2el_p50": True,
             "request_throughput": False, "output_throughput": False, "peak_rss_mib": True,
             "peak_kv_cache_usage": True}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile; with few requests p99 is close to the maximum, as it should be."""
    return float(np.percentile(values, q)) if len(values) else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _div(a: float | None, b: float | None, scale: float = 1.0) -> float | None:
    return None if a is None or b is None or b == 0 else a / b * scale


def summarize_point(results: list[RequestResult], deltas: dict[str, float | None],
                    peak_rss: int, peak_gpu: int | None) -> dict[str, Any]:
    """Figures of one repeat of one point. Throughputs use the wall time from the first request sent to the
    last one finished, as ``vllm bench serve`` does."""
    ok = [r for r in results if r.ok]
    duration = max(r.end for r in results) - min(r.start for r in results) if results else 0.0
    ttft = [r.ttft for r in ok]
    tpot = [r.tpot for r in ok if r.tpot is not None]
    e2el = [r.latency for r in ok]
    prompt = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    out_tokens = sum(r.completion_tokens or 0 for r in ok)
    cached = [r.cached_tokens for r in ok if r.cached_tokens is not None]
    n = len(ok)
    return {
        "requests": len(results), "errors": len(results) - n, "duration_s": duration,
        "ttft_mean": _mean(ttft), "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
        "tpot_mean": _mean(tpot), "tpot_p50": percentile(tpot, 50), "tpot_p99": percentile(tpot, 99),
        "e2el_mean": _mean(e2el), "e2el_p50": percentile(e2el, 50), "e2el_p99": percentile(e2el, 99),
        "request_throughput": _div(n, duration), "output_throughput": _div(out_tokens, duration),
        "total_token_throughput": _div(sum(prompt) + out_tokens, duration),
        "prompt_tokens_mean": _mean(prompt), "output_tokens_mean": _div(out_tokens, n),
        "cached_tokens_total": sum(cached) if cached else None,
        "tower_ms_per_request": _div(deltas.get("tower_seconds"), n, 1e3),
        "selection_ms_per_request": _div(deltas.get("selection_seconds"), n, 1e3),
        "kept_fraction": _div(deltas.get("video_tokens_kept"), deltas.get("video_tokens_unpruned")),
        "server_prefill_s_mean": _div(deltas.get("server_prefill_seconds"), deltas.get("server_requests")),
        "server_queue_s_mean": _div(deltas.get("server_queue_seconds"), deltas.get("server_requests")),
        "slice_cache_hits": deltas.get("slice_cache_hits"), "slice_cache_misses": deltas.get("slice_cache_misses"),
        "peak_rss_mib": peak_rss / 2**20, "peak_gpu_mib": None if peak_gpu is None else peak_gpu / 2**20,
        "first_error": next((r.error for r in results if not r.ok), None),
        "metric_deltas": deltas,
        **{f"stage_{k}_s": v for k, v in stages(_mean(ttft), deltas, n).items()},
    }


def stages(ttft_mean: float | None, deltas: dict[str, float | None], n: int) -> dict[str, float | None]:
    """Where a request's time goes, in seconds per request (means over the point's requests):

    - ``api_server``: TTFT (client) minus vLLM's queue and prefill time: receiving the request, decoding the
      video, the multimodal processor (its ``api_processor`` part, the plugin's share of it ``api_plugin``) and
      the hand-off to the engine, plus the first token's way back;
    - ``queue``, ``prefill``, ``decode``: vLLM's ``request_{queue,prefill,decode}_time_seconds``; ``prefill``
      minus the plugin's ``tower`` and ``selection`` (``vtprune:*`` per request) where the server reports them,
      so for vanilla ``prefill`` includes its tower.

    Tower and selection run in engine steps shared with other requests, so at high concurrency a request's
    prefill wall time holds other requests' work too: these are latencies per request, not a division of
    the engine's busy time."""
    requests = deltas.get("server_requests")
    per = {key: _div(deltas.get(f"server_{key}_seconds"), requests) for key in ("queue", "prefill", "decode")}
    tower, selection = _div(deltas.get("tower_seconds"), n), _div(deltas.get("selection_seconds"), n)
    api = None if ttft_mean is None or None in (per["queue"], per["prefill"]) else \
        max(0.0, ttft_mean - per["queue"] - per["prefill"])
    prefill = per["prefill"]
    if prefill is not None:
        prefill = max(0.0, prefill - (tower or 0.0) - (selection or 0.0))
    return {"api_server": api, "api_processor": _div(deltas.get("api_processor_seconds"), n),
            "api_plugin": _div(deltas.get("api_plugin_seconds"), n), "queue": per["queue"], "tower": tower,
            "selection": selection, "prefill": prefill, "decode": per["decode"]}


def median_over(repeats: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Field-wise median of numeric figures (None where no repeat has a value); errors are summed."""
    repeats = list(repeats)
    out: dict[str, Any] = {}
    for key in repeats[0]:
        values = [r[key] for r in repeats if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
        if key in ("errors", "requests"):
            out[key] = sum(values)
        elif key not in ("metric_deltas", "first_error"):
            out[key] = statistics.median(values) if values else None
    out["first_error"] = next((r["first_error"] for r in repeats if r.get("first_error")), None)
    return out


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``row["ratio"][field]`` = figure / the same figure of vanilla (or ``none``) at the same concurrency."""
    by_key = {(r["config"]["name"], r["concurrency"]): r for r in rows}
    for row in rows:
        c = row["concurrency"]
        vanilla, none = by_key.get(("vanilla", c)), by_key.get(("none", c))
        ratios = {}
        for key, value in row["median"].items():
            if not isinstance(value, (int, float)):
                continue
            ref = none if key in PLUGIN_ONLY else vanilla
            ratios[key] = _div(value, ref["median"].get(key)) if ref else None
        row["ratio"] = ratios
        row["ratio_reference"] = {"default": "vanilla", **{k: "none" for k in PLUGIN_ONLY}}


def losses(rows: list[dict[str, Any]], tolerance: float = 0.02) -> list[dict[str, Any]]:
    """Plugin points worse than vanilla at the same concurrency by more than ``tolerance`` on a headline
    figure: what the report lists under "where the plugin loses", so those cases are never buried."""
    vanilla = {r["concurrency"]: r for r in rows if r["config"]["server"] == "vanilla"}
    out = []
    for row in rows:
        if row["config"]["server"] == "vanilla":
            continue
        for key, lower_better in DIRECTION.items():
            ratio = row.get("ratio", {}).get(key)
            if ratio is None:
                continue
            if (lower_better and ratio > 1 + tolerance) or (not lower_better and ratio < 1 - tolerance):
                out.append({"config": row["config"]["name"], "concurrency": row["concurrency"], "figure": key,
                            "ratio": ratio, "plugin_range": _range(row, key),
                            "vanilla_range": _range(vanilla.get(row["concurrency"]), key)})
    return out


def _range(row: dict[str, Any] | None, key: str) -> tuple[float, float] | None:
    """Min and max of a figure over the repeats: whether a loss is larger than the run-to-run spread."""
    values = [r[key] for r in (row or {}).get("repeats", []) if isinstance(r.get(key), (int, float))]
    return (min(values), max(values)) if values else None
