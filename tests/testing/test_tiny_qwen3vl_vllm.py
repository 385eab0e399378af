"""vLLM 0.32.0 really loads the tiny checkpoint and runs a video prompt through it (offline, CPU, ~50 s)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from vllm_vtprune.testing.videos import make_frames

NUM_FRAMES, WIDTH, HEIGHT, FPS = 8, 192, 128, 4.0
PROMPT = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What moves?<|im_end|>\n<|im_start|>assistant\n"
MAX_TOKENS = 6

# vLLM spawns its engine processes, so the script needs the __main__ guard.
_SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams
from vllm_vtprune.testing.videos import make_frames

def main():
    model, num_frames, width, height, fps, prompt, max_tokens = json.loads(sys.argv[1])
    frames = make_frames("moving_objects", num_frames, width, height)
    metadata = {
        "fps": fps, "duration": num_frames / fps, "total_num_frames": num_frames,
        "frames_indices": list(range(num_frames)), "video_backend": "opencv", "do_sample_frames": False,
    }
    llm = LLM(model=model, max_model_len=4096, enforce_eager=True, dtype="float32", seed=0,
              limit_mm_per_prompt={"video": 1, "image": 0})
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    out = llm.generate([{"prompt": prompt, "multi_modal_data": {"video": (frames, metadata)}}], params)[0]
    print("RESULT " + json.dumps({"prompt_ids": out.prompt_token_ids, "output_ids": list(out.outputs[0].token_ids)}))

if __name__ == "__main__":
    main()
"""


def _expected_prompt_ids(tokenizer, grid_thw: list[int]) -> list[int]:
    """The prompt after vLLM's Qwen3-VL expansion of the single ``<|video_pad|>``."""
    grid_t, grid_h, grid_w = grid_thw
    vision_start, vision_end, video_pad = tokenizer.convert_tokens_to_ids(
        ["<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
    )
    expansion = []
    for t in range(grid_t):
        timestamp = (2 * t + 0.5) / FPS  # mean time of the slice's two frames
        expansion += tokenizer.encode(f"<{timestamp:.1f} seconds>", add_special_tokens=False)
        expansion += [vision_start] + [video_pad] * (grid_h // 2 * grid_w // 2) + [vision_end]
    ids = tokenizer.encode(PROMPT, add_special_tokens=False)
    at = ids.index(video_pad)
    return ids[:at] + expansion + ids[at + 1 :]


def test_vllm_serves_tiny_model_with_video(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    grid = processor.video_processor(
        videos=[make_frames("moving_objects", NUM_FRAMES, WIDTH, HEIGHT)], do_sample_frames=False
    )["video_grid_thw"][0].tolist()
    assert grid == [4, 8, 12]
    expected = _expected_prompt_ids(processor.tokenizer, grid)
    # 4 slices x (6 timestamp tokens + vision_start + 24 pads + vision_end) replace the one pad.
    assert len(expected) == len(processor.tokenizer.encode(PROMPT)) - 1 + 4 * (6 + 1 + 24 + 1)

    script = tmp_path / "run_vllm.py"
    script.write_text(_SCRIPT)
    args = json.dumps([str(tiny_checkpoint), NUM_FRAMES, WIDTH, HEIGHT, FPS, PROMPT, MAX_TOKENS])
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_PLUGINS": ""}  # keep our plugin out
    proc = subprocess.run(
        [sys.executable, str(script), args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    # The engine's root cause comes first in stderr, the client's re-raise last: keep both.
    first = proc.stderr.find("Traceback")
    assert proc.returncode == 0, proc.stderr[max(first, 0) : max(first, 0) + 6000] + "\n...\n" + proc.stderr[-2000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])

    assert result["prompt_ids"] == expected
    assert len(result["output_ids"]) == MAX_TOKENS
    assert all(0 <= i < len(processor.tokenizer) for i in result["output_ids"])
