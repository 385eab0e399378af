"""``make demo`` (``python -m vllm_vtprune.demo``), one of the README's two commands, end to end: it serves the
tiny model with the V-CAST preset and reports the pruned and unpruned prompt sizes from a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_prints_pruned_and_unpruned_prompt_sizes() -> None:
    run = subprocess.run([sys.executable, "-m", "vllm_vtprune.demo"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    pruned, unpruned = map(int, re.search(r"prompt tokens: (\d+) with --vtprune-preset vcast, (\d+) unpruned",
                                          run.stdout).groups())
    kept, total = map(int, re.search(r"video tokens kept: (\d+) of (\d+)", run.stdout).groups())
    assert kept == total // 4  # the preset's retention, 0.25
    assert 0 < pruned < unpruned
