"""Smoke run of the benchmark suite, so the harness cannot rot: tiny model, one pruning configuration, a few
seconds of load on one vanilla and one plugin server (their start-up, ~1 min here, is most of the cost).

Asserts the structure of the outputs and that ratios were computed, never speed: speed on a shared CI
machine is not a test.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.serving.cli import main

SMOKE_ARGS = [
    "--model", "tiny", "--methods", "vcast", "--retentions", "0.5", "--sweep-retention", "0.5",
    "--concurrency", "1,2", "--repeats", "1", "--videos", "8x128x128,4x160x96", "--output-len", "4",
    "--stream-turns", "3", "--stream-seconds", "2", "--stream-size", "128x128", "--stream-sessions", "1",
    "--stream-output-len", "4", "--stream-config", "vcast@0.5", "--stream-config", "vcast@0.5+slice-cache",
    "--no-publish", "--no-progress",
]
FIGURES = ("ttft_mean", "ttft_p50", "ttft_p99", "tpot_p50", "e2el_p50", "request_throughput", "output_throughput",
           "prompt_tokens_mean", "peak_rss_mib", "tower_ms_per_request", "selection_ms_per_request")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, object]:
    out = tmp_path_factory.mktemp("bench")
    main([*SMOKE_ARGS, "--out", str(out), "--media-dir", str(out / "media")])
    return json.loads((out / "results.json").read_text()), out


def test_outputs_written(smoke):
    result, out = smoke
    for name in ("results.md", "throughput_vs_concurrency.png", "ttft_vs_retention.png", "stage_breakdown.png",
                 "streaming_session.png"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "results.md").read_text()
    for section in ("## Setup", "## Retention sweep", "## Concurrency sweep", "## Where the time goes",
                    "## Where the plugin loses", "## Streaming session", "### Mode `grow`", "### Mode `chunks`"):
        assert section in md
    assert result["software"]["vllm"] and result["machine"]["cpu_count"]
    assert result["model"]["vision"]["depth"] > 0
    assert set(result["servers"]) == {"vanilla", "plugin"}
    assert "VLLM_PLUGINS=''" in result["servers"]["vanilla"] and "--plugin vtprune" in result["servers"]["plugin"]


def test_serving_rows_and_ratios(smoke):
    result, _ = smoke
    rows = {(r["config"]["name"], r["concurrency"]): r for r in result["serving"]}
    assert set(rows) == {("vanilla", 1), ("none", 1), ("vcast@0.5", 1), ("vanilla", 2), ("none", 2), ("vcast@0.5", 2)}
    for key, row in rows.items():
        m = row["median"]
        assert m["errors"] == 0, (key, m["first_error"])
        plugin = row["config"]["server"] == "plugin"
        for figure in FIGURES:
            if figure.startswith(("tower", "selection")) and not plugin:
                assert m[figure] is None  # vanilla exports no vtprune metrics: n/a, not 0
                continue
            assert isinstance(m[figure], float), (key, figure)
            assert isinstance(row["ratio"][figure], float), (key, figure)
        assert m["cached_tokens_total"] == 0  # unique clips: no prefix-cache hit inflates a result
        for stage in ("api_server", "queue", "prefill", "decode", *(("tower", "selection", "api_processor",
                                                                       "api_plugin") if plugin else ())):
            assert isinstance(m[f"stage_{stage}_s"], float) and m[f"stage_{stage}_s"] >= 0, (key, stage)
        if plugin:  # the plugin's share is part of the processor's time, which is part of the API server's
            assert m["stage_api_plugin_s"] <= m["stage_api_processor_s"]
        else:
            assert m["stage_tower_s"] is None and m["stage_api_processor_s"] is None
    assert rows[("vanilla", 1)]["ratio"]["ttft_p50"] == pytest.approx(1.0)
    assert rows[("none", 1)]["ratio"]["tower_ms_per_request"] == pytest.approx(1.0)
    pruned, vanilla = rows[("vcast@0.5", 1)]["median"], rows[("vanilla", 1)]["median"]
    assert pruned["prompt_tokens_mean"] < vanilla["prompt_tokens_mean"]
    assert pruned["kept_fraction"] == pytest.approx(0.5, abs=0.05)


def test_streaming_rows(smoke):
    result, _ = smoke
    rows = {(r["mode"], r["config"]["name"]): r for r in result["streaming"]}
    assert set(rows) == {(mode, name) for mode in ("grow", "chunks")
                         for name in ("vanilla", "vcast@0.5", "vcast@0.5+slice-cache")}
    for row in rows.values():
        assert row["median"]["errors"] == 0
        assert len(row["per_turn"]) == 3
        assert row["per_turn"][2]["prompt_tokens"] > row["per_turn"][1]["prompt_tokens"]  # the video grew
        assert row["median"]["computed_tokens_total"] <= row["median"]["prompt_tokens_total"]
    for mode in ("grow", "chunks"):
        assert rows[(mode, "vcast@0.5")]["ratio"]["prompt_tokens_total"] < 1.0
    # grow: turn 2 resends turn 1's frames (decoded bit-identically), so the slice cache must serve them.
    assert rows[("grow", "vcast@0.5")]["median"]["slice_cache_hits_total"] == 0
    assert rows[("grow", "vcast@0.5+slice-cache")]["median"]["slice_cache_hits_total"] > 0
    # chunks: turn 3 repeats turns 1-2's conversation (longer than one 128-token CPU block), so its first
    # blocks come from the prefix cache, pruned or not.
    for name in ("vanilla", "vcast@0.5"):
        turn = rows[("chunks", name)]["per_turn"][2]
        assert turn["computed_tokens"] < turn["prompt_tokens"], name
