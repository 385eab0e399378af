"""``make demo`` (``python -m vllm_vtprune.demo``), one of the README's two commands, end to end: it serves the
trained tiny model with the V-CAST preset, answers the first five test questions right, and its token counts
are those of the videos' grids and V-CAST's budget."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from vllm_vtprune.core.budget import ratio_budget
from vllm_vtprune.settings import load_preset
from vllm_vtprune.testing.video_qa import FAMILIES, FRAMES_PER_SLICE, TOKEN_PX, generate, sampled_frame_indices

ROOT = Path(__file__).resolve().parents[2]
ITEM = re.compile(r"^\[(\w+)\] \w+_(\d+)\.mp4: .*\n  answer: (\S+) .*\| expected: (\S+) .*\n"
                  r"  prompt tokens: (\d+) with --vtprune-preset vcast, (\d+) unpruned$", re.M)


def video_tokens(seed: int) -> int:
    """LLM video tokens of a QA clip before pruning: temporal slices x (32-px cells of a frame)."""
    item, _ = generate(seed)
    slices = len(sampled_frame_indices(item.num_frames, item.fps)) // FRAMES_PER_SLICE
    return slices * (item.width // TOKEN_PX) * (item.height // TOKEN_PX)


def test_demo_answers_right_and_prunes_to_the_preset_budget() -> None:
    run = subprocess.run([sys.executable, "-m", "vllm_vtprune.demo"], cwd=ROOT, capture_output=True, text=True,
                         timeout=900, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    items = ITEM.findall(run.stdout)
    assert [family for family, *_ in items] == list(FAMILIES), run.stdout  # one question per family
    retention = load_preset("vcast")["retention"]
    kept_sum = total_sum = 0
    for family, seed, answer, expected, pruned, unpruned in items:
        assert answer == expected == generate(int(seed))[0].answer, (family, run.stdout)
        total = video_tokens(int(seed))
        kept = ratio_budget(total, retention)
        assert int(unpruned) - int(pruned) == total - kept, (family, total, kept)
        kept_sum, total_sum = kept_sum + kept, total_sum + total
    assert "correct: 5 of 5 with --vtprune-preset vcast" in run.stdout
    kept, total = map(int, re.search(r"^video tokens kept: (\d+) of (\d+)$", run.stdout, re.M).groups())
    assert (kept, total) == (kept_sum, total_sum)
