"""Fast checks of the benchmark harness's bookkeeping (no servers): plan, /metrics deltas, medians, ratios."""

from __future__ import annotations

import pytest

from benchmarks.serving.client import RequestResult
from benchmarks.serving.plan import NONE_CONFIG, build_plan, parse_config, requests_per_point
from benchmarks.serving.prom import Snapshot, deltas
from benchmarks.serving.stats import add_ratios, losses, median_over, stages, summarize_point

METRICS_BEFORE = """\
# HELP vtprune:videos_total Videos.
vtprune:videos_total{method="none"} 2.0
vtprune:video_tokens_unpruned_total{method="none"} 100.0
vtprune:video_tokens_kept_total{method="none"} 100.0
vtprune:vision_tower_seconds_sum 1.0
vtprune:vision_tower_seconds_count 2.0
vllm:prompt_tokens_total{engine="0",model_name="m"} 500.0
"""
METRICS_AFTER = """\
vtprune:videos_total{method="none"} 2.0
vtprune:videos_total{method="vcast"} 2.0
vtprune:video_tokens_unpruned_total{method="none"} 100.0
vtprune:video_tokens_unpruned_total{method="vcast"} 200.0
vtprune:video_tokens_kept_total{method="none"} 100.0
vtprune:video_tokens_kept_total{method="vcast"} 50.0
vtprune:vision_tower_seconds_sum 1.5
vtprune:vision_tower_seconds_count 4.0
vllm:prompt_tokens_total{engine="0",model_name="m"} 700.0
"""


def test_plan_has_both_sweeps_once():
    plan = build_plan(["vcast", "evs"], [0.5, 0.25], [1, 2, 4], 0.25, num_specs=3)
    keys = [p.key for p in plan]
    assert len(keys) == len(set(keys))
    at_1 = {name for name, c in keys if c == 1}
    assert at_1 == {"vanilla", "none", "vcast@0.5", "vcast@0.25", "evs@0.5", "evs@0.25"}
    at_4 = {name for name, c in keys if c == 4}
    assert at_4 == {"vanilla", "none", "vcast@0.25", "evs@0.25"}
    assert {p.sweep for p in plan if p.key == ("vcast@0.25", 1)} == {"both"}
    assert requests_per_point(1, 3, 2) == 3 and requests_per_point(4, 3, 2) == 8


def test_config_overrides():
    assert NONE_CONFIG.vtprune == {"method": "none", "retention": 1.0, "slice_cache": False}
    assert parse_config("vcast@0.25").vtprune == {"method": "vcast", "retention": 0.25, "slice_cache": False}
    cached = parse_config("vcast@0.25+slice-cache")
    assert cached.name == "vcast@0.25+slice-cache" and cached.vtprune["slice_cache"] is True
    pre_tower = parse_config("novelty@0.25")  # decided from pixels: its own stage, the post-tower method `none`
    assert pre_tower.name == "novelty@0.25" and pre_tower.vtprune == {
        "method": "none", "pre_tower": {"method": "novelty", "retention": 0.25}, "slice_cache": False}
    custom = parse_config('c={"method": "stc", "retention": 0.3, "cacher": {"r": 0.25}}')
    assert custom.name == "c" and custom.vtprune == {"method": "stc", "retention": 0.3, "cacher": {"r": 0.25}}


def test_metric_deltas_sum_labels_and_miss_gracefully():
    d = deltas(Snapshot.parse(METRICS_BEFORE), Snapshot.parse(METRICS_AFTER))
    assert d["videos"] == 2.0
    assert d["video_tokens_kept"] == 50.0 and d["video_tokens_unpruned"] == 200.0
    assert d["tower_seconds"] == pytest.approx(0.5) and d["tower_batches"] == 2.0
    assert d["server_prompt_tokens"] == 200.0
    assert d["selection_seconds"] is None  # not exported: reported as n/a, never 0


def _result(ttft: float, start: float = 0.0) -> RequestResult:
    """Decode takes 0.6 s for 5 tokens whatever the TTFT, so only TTFT-derived figures differ."""
    return RequestResult(ok=True, start=start, end=start + ttft + 0.6, ttft=ttft, latency=ttft + 0.6,
                         prompt_tokens=100, completion_tokens=5, cached_tokens=0)


def _row(name: str, server: str, ttft: float) -> dict:
    summary = summarize_point([_result(ttft), _result(ttft, 1.0)], {"tower_seconds": 0.2}, 2**30, None)
    return {"config": {"name": name, "server": server}, "concurrency": 1, "median": median_over([summary, summary])}


def test_summary_ratios_and_losses():
    rows = [_row("vanilla", "vanilla", 0.4), _row("none", "plugin", 0.4), _row("vcast@0.25", "plugin", 0.2),
            _row("evs@0.25", "plugin", 0.8)]
    m = rows[0]["median"]
    assert m["ttft_p50"] == pytest.approx(0.4) and m["tpot_p50"] == pytest.approx(0.15)
    assert m["request_throughput"] == pytest.approx(2 / 2.0)  # two requests, first start 0, last end 2.0
    assert m["peak_rss_mib"] == pytest.approx(1024)
    add_ratios(rows)
    assert rows[0]["ratio"]["ttft_p50"] == pytest.approx(1.0)
    assert rows[2]["ratio"]["ttft_p50"] == pytest.approx(0.5)
    assert rows[2]["ratio"]["tower_ms_per_request"] == pytest.approx(1.0)  # plugin-only: relative to `none`
    lost = losses(rows)
    assert {(x["config"], x["figure"]) for x in lost} == {
        ("evs@0.25", "ttft_p50"), ("evs@0.25", "ttft_p99"), ("evs@0.25", "e2el_p50"),
        ("evs@0.25", "request_throughput"), ("evs@0.25", "output_throughput")}


def test_stages_split_a_request():
    """TTFT = API server + queue + prefill; the plugin's tower and selection come out of prefill."""
    d = {"server_requests": 4.0, "server_queue_seconds": 2.0, "server_prefill_seconds": 8.0,
         "server_decode_seconds": 12.0, "tower_seconds": 2.0, "selection_seconds": 0.4,
         "api_processor_seconds": 0.8, "api_plugin_seconds": 0.2}
    s = stages(3.5, d, 4)
    assert s == pytest.approx({"api_server": 3.5 - 0.5 - 2.0, "api_processor": 0.2, "api_plugin": 0.05,
                               "queue": 0.5, "tower": 0.5, "selection": 0.1, "prefill": 2.0 - 0.5 - 0.1,
                               "decode": 3.0})
    vanilla = stages(3.5, {**d, "tower_seconds": None, "selection_seconds": None, "api_processor_seconds": None,
                           "api_plugin_seconds": None}, 4)
    assert vanilla["prefill"] == pytest.approx(2.0) and vanilla["tower"] is None  # its prefill holds its tower
    assert stages(None, d, 4)["api_server"] is None
