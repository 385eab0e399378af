"""Smoke run of ``benchmarks/bench_pretower.py --quick`` (tiny tower, 8-frame clips), so it cannot rot.

Asserts the structure and the exact quantities (kept counts, shipped rows, cosines in range), never speed.
"""

from __future__ import annotations

import json

from benchmarks.bench_pretower import KINDS, main


def test_quick_run_writes_every_video_and_configuration(tmp_path, capsys):
    out = tmp_path / "pretower.json"
    assert main(["--quick", "--repeats", "1", "--threads", "0", "--json", str(out)]) == 0  # keep torch's threads
    result = json.loads(out.read_text())
    assert result["config"] == "tiny" and set(result["videos"]) == set(KINDS)
    for video in result["videos"].values():
        rows = {r["method"]: r for r in video["rows"]}
        assert set(rows) == {"novelty R=0.5", "novelty R=0.25", "dedup R=0.5", "dedup R=0.25"}
        for name, r in rows.items():
            retention = float(name.split("=")[1])
            assert r["kept"] == round(r["tokens"] * retention)
            assert r["rows_shipped"] <= r["kept"] / r["tokens"]
            assert r["full_s"] > 0 and r["subset_s"] > 0 and r["ratio"] > 0
            assert 0.5 < r["cos_main_mean"] <= 1.0 + 1e-6 and r["cos_main_min"] <= r["cos_main_mean"] + 1e-6
    assert "cos main" in capsys.readouterr().out
