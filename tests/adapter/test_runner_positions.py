"""The language model reads pruned videos' positions from the model runner's own buffer, already final.

CUDA graphs replay the addresses they captured, and a FULL graph replays the whole forward without running the
model's Python, so the only positions that are right on a GPU are the ones the runner itself holds when it calls
the model. ``gpu_check`` runs vLLM in child processes with ``position_probe`` installed and checks at every
forward that (1) the runner's persistent M-RoPE buffer already holds the unpruned positions at every kept token
(and the unpruned decode positions) before any model code runs, and (2) the tensor the language model receives
is that buffer. On this CPU machine "graphs" is vLLM's compiled path (no CUDA graphs exist here).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_vtprune.testing import gpu_check

ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"


@pytest.fixture(scope="module")
def mixed_runs(tiny_model, videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    video_dir = Path(videos["moving_objects"]).parent
    return {mode: gpu_check.run(mode, "mixed", tiny_model, video_dir, out / f"{mode}.json")
            for mode in gpu_check.MODES}


@pytest.mark.parametrize("mode", ["graphs", "eager"])
def test_language_model_reads_final_positions_from_the_runners_buffer(mixed_runs, mode):
    positions = mixed_runs[mode]["positions"]
    assert positions["num_mismatches"] == 0, positions["mismatches"]
    assert positions["runner_passes_buffer"] and positions["lm_reads_buffer"]
    # The scenarios the check must cover really happened.
    assert positions["dynamic_videos"] >= 2
    assert positions["split_dynamic_prefills"] >= 2  # a pruned video's prefill spread over several steps
    assert positions["mixed_steps"] >= 1  # pruned and unpruned requests in one batch
    assert mixed_runs[mode]["requests"]["f-vcast-cached"]["cached_tokens"] > 0  # video KV from the prefix cache
    assert positions["checked"] > 1000


def test_graphs_eager_and_vanilla_agree(mixed_runs):
    assert gpu_check.compare(mixed_runs, "mixed") == []


@pytest.mark.parametrize("arch", ["qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"])
def test_every_architecture_places_positions_in_the_runners_buffer(videos, tmp_path, arch):
    """The same check, eager, on the other Qwen3-VL-family models (hybrid attention included)."""
    from vllm_vtprune.testing.tiny_qwen3vl import build_tiny_qwen3vl

    model = str(build_tiny_qwen3vl(ARTIFACTS / f"tiny-{arch}", arch=arch))
    run = gpu_check.run("eager", "mixed", model, Path(videos["moving_objects"]).parent, tmp_path / "run.json")
    positions = run["positions"]
    assert positions["num_mismatches"] == 0, positions["mismatches"]
    assert positions["runner_passes_buffer"] and positions["lm_reads_buffer"]
    assert positions["dynamic_videos"] >= 2 and positions["split_dynamic_prefills"] >= 2
    assert run["requests"]["f-vcast-cached"]["cached_tokens"] > 0


def test_reencoded_and_preempted_videos_select_and_place_alike(tiny_model, videos, tmp_path):
    """A video pushed out of the encoder cache is encoded again when asked about again (a stateful method whose
    stream has moved on since): the probe fails if the second encode selects differently. Requests that outgrow
    the KV blocks are preempted and recomputed; positions stay right throughout."""
    run = gpu_check.run("eager", "reencode", tiny_model, Path(videos["moving_objects"]).parent, tmp_path / "r.json")
    positions = run["positions"]
    assert positions["num_mismatches"] == 0, positions["mismatches"]
    assert positions["reencoded_videos"] >= 1
    assert run["requests"]["s1-again"]["cached_tokens"] > 0  # its first rows came from the prefix cache
    assert positions["preempted"] >= 1
