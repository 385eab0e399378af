"""The language model reads pruned videos' positions from the model runner's own buffer, already final.

CUDA graphs replay the addresses they captured, and a FULL graph replays the whole forward without running the
model's Python, so the only positions that are right on a GPU are the ones the runner itself holds when it calls
the model. ``runner_probe.py`` runs vLLM in a subprocess with the plugin and checks, at every forward, that
(1) the runner's persistent M-RoPE buffer already holds the unpruned positions at every kept token (and the
unpruned decode positions) before any model code runs, and (2) the tensor the language model receives is that
buffer. The batch mixes pruned and unpruned requests, prefills split across steps, and a second round whose
video KV comes from the prefix cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).with_name("runner_probe.py")


def test_language_model_reads_final_positions_from_the_runners_buffer(tiny_model, videos, tmp_path):
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, str(PROBE), tiny_model, str(Path(videos["moving_objects"]).parent),
                           str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["num_mismatches"] == 0, result["mismatches"]
    assert result["runner_passes_buffer"] and result["lm_reads_buffer"]
    # The scenarios the check must cover really happened.
    assert result["dynamic_videos"] >= 2
    assert result["split_dynamic_prefills"] >= 2  # a pruned video's prefill spread over several steps
    assert result["mixed_steps"] >= 1  # pruned and unpruned requests in one batch
    assert result["cached_tokens"][-1] > 0  # round 2's video came from the prefix cache
    assert result["checked"] > 1000
