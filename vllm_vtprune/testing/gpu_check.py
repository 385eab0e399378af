"""Self-check of the plugin on this machine's vLLM: default graphs/compilation against eager, and against vanilla.

``python -m vllm_vtprune.testing.gpu_check`` (``make gpu-check``) builds the tiny Qwen3-VL and the test videos,
then runs vLLM in three child processes on the same mixed batch (pruned videos of several methods, an unpruned
video, an image, text only; prefills split across steps; a second round served from the prefix cache):

- ``graphs``: the plugin with vLLM's defaults (on a GPU: the V2 runner, CUDA graphs, torch.compile);
- ``eager``: the plugin with ``enforce_eager=True``;
- ``vanilla``: vLLM without the plugin.

It passes when, in both plugin runs, every position the runner handed the language model equals the prompt's
unpruned position at the tokens it kept (``position_probe``), graphs and eager give the same tokens, and the
unpruned requests give vanilla's tokens. Run it after installing the plugin on a new GPU, driver or vLLM
version. ``--scenario reencode`` adds re-encoded videos and preemption (the test suite runs both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

PLUGIN = {"method": "vcast", "retention": 0.25, "request_overrides": "any"}  # requests pick their methods
# name -> (video kind or None, image?, per-request vtprune settings or None, question).
MIXED = [
    {"a-vcast": ("moving_objects", False, {"method": "vcast", "retention": 0.25}, "What happens?"),
     "b-stc": ("slow_pan", False, {"method": "stc", "retention": 0.3}, "Where does it pan?"),
     "c-none": ("scene_cut", False, {"method": "none"}, "Is there a cut?"),
     "c-pretower": ("near_static", False, {"method": "none", "pre_tower": {"method": "novelty", "retention": 0.25}},
                    "What changes?"),
     "c-two-stage": ("scene_cut", False, {"method": "vcast", "retention": 0.5,
                                          "pre_tower": {"method": "dedup", "retention": 0.6}}, "What happens?"),
     "d-image": (None, True, None, "Describe the image."),
     "e-text": (None, False, None, "Count from zero.")},
    {"f-vcast-cached": ("moving_objects", False, {"method": "vcast", "retention": 0.25},
                        "Describe the motion in detail.")},
]
# A stream advances over two videos; other videos push the first out of the encoder cache; the first is asked
# about again (its KV partly from the prefix cache, the rest from a re-encode that must select what the first
# encode selected); then more concurrent decodes than the KV blocks hold, so the scheduler preempts.
STREAM = {"method": "stc", "retention": 0.3, "stream_id": "s"}
REENCODE = [
    {"s1": ("moving_objects", False, STREAM, "What happens?")},
    {"s2": ("slow_pan", False, {**STREAM, "retention": 0.4}, "Where does it pan?")},
    {"x1": ("scene_cut", False, {"method": "none"}, "Is there a cut?"),
     "x2": ("near_static", False, {"method": "none"}, "Any motion?")},
    {"s1-again": ("moving_objects", False, STREAM, "Describe the motion in detail.")},
    {f"p-{kind}": (kind, False, {"method": "vcast", "retention": r}, "Summarize.")
     for kind, r in (("moving_objects", 0.9), ("slow_pan", 0.85), ("scene_cut", 0.8), ("near_static", 0.75))},
]
MODES = ("graphs", "eager", "vanilla")
TOP_K = 5


def close(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Greedy answers agree up to numerical noise (as vLLM's own tests compare them): identical until they first
    differ, and there each run's token is among the other's top tokens. Compiled and eager kernels, or another
    batch composition, round differently; a wrong position changes the answer outright."""
    for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"])):
        if x != y:
            return x in b["top"][i] and y in a["top"][i]
    return True


def _frames(path: Path):
    import cv2
    import numpy as np

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])
    fps = cap.get(cv2.CAP_PROP_FPS)
    meta = {"fps": fps, "duration": len(frames) / fps, "total_num_frames": len(frames),
            "frames_indices": list(range(len(frames))), "video_backend": "opencv", "do_sample_frames": False}
    return np.stack(frames), meta


def _request(spec, videos: dict[str, Path], plugin: bool) -> dict[str, Any]:
    import numpy as np

    kind, image, vtprune, question = spec
    parts, data = "", {}
    if kind is not None:
        parts += "<|vision_start|><|video_pad|><|vision_end|>"
        data["video"] = [_frames(videos[kind])]
    if image:
        parts += "<|vision_start|><|image_pad|><|vision_end|>"
        data["image"] = [np.full((64, 96, 3), 120, np.uint8)]
    request: dict[str, Any] = {"prompt": f"<|im_start|>user\n{parts}{question}<|im_end|>\n<|im_start|>assistant\n"}
    if data:
        request["multi_modal_data"] = data
    if vtprune is not None and plugin:
        request["mm_processor_kwargs"] = {"vtprune": vtprune}
    return request


def run_child(mode: str, scenario: str, model: str, video_dir: Path, out: Path) -> None:
    """One engine in this process: serve the scenario, write outputs and the position check."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # CPU: a fixed KV size, no check of free memory
    from vllm import LLM, SamplingParams

    from vllm_vtprune.testing import position_probe
    from vllm_vtprune.testing.videos import video_suite

    plugin = mode != "vanilla"
    reencode = scenario == "reencode"
    recording = position_probe.Recording()
    if plugin:
        position_probe.install(recording, lm_hook=mode == "eager")
    kwargs: dict[str, Any] = {"additional_config": {"vtprune": PLUGIN}} if plugin else {}
    if reencode:  # few KV blocks, so long decodes outgrow them
        kwargs.update(num_gpu_blocks_override=30, max_model_len=3072)
    llm = LLM(model=model, enforce_eager=mode == "eager", limit_mm_per_prompt={"video": 1, "image": 1},
              max_num_batched_tokens=160, max_num_seqs=8, max_model_len=kwargs.pop("max_model_len", 8192),
              gpu_memory_utilization=0.3, **kwargs)
    videos = video_suite(video_dir)
    rounds = REENCODE if reencode else MIXED
    results: dict[str, Any] = {}
    for number, batch in enumerate(rounds):
        long_decode = reencode and number == len(rounds) - 1
        params = SamplingParams(max_tokens=400 if long_decode else 8, temperature=0, logprobs=TOP_K, ignore_eos=True)
        outputs = llm.generate([_request(spec, videos, plugin) for spec in batch.values()], params, use_tqdm=False)
        for name, o in zip(batch, outputs):
            completion = o.outputs[0]
            results[name] = {"tokens": list(completion.token_ids), "prompt_tokens": len(o.prompt_token_ids),
                             "cached_tokens": o.num_cached_tokens,
                             "top": [sorted(lp, key=lambda t: -lp[t].logprob) for lp in completion.logprobs]}
    check = position_probe.check(recording, llm.llm_engine.model_config.hf_config, llm.get_tokenizer()) \
        if plugin else None
    out.write_text(json.dumps({"mode": mode, "requests": results, "positions": check}))


def run(mode: str, scenario: str, model: str, video_dir: Path, out: Path) -> dict[str, Any]:
    env = {**os.environ, **({"VLLM_PLUGINS": ""} if mode == "vanilla" else {})}
    command = [sys.executable, "-m", "vllm_vtprune.testing.gpu_check", "--child", mode, "--scenario", scenario,
               "--model", model, "--videos", str(video_dir), "--out", str(out)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the {mode} run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def compare(runs: dict[str, dict[str, Any]], scenario: str) -> list[str]:
    """What differs between the runs that must agree; empty when the check passes."""
    problems = []
    for mode in ("graphs", "eager"):
        positions = runs[mode]["positions"]
        if positions["num_mismatches"]:
            problems.append(f"{mode}: {positions['num_mismatches']} of {positions['checked']} positions differ from "
                            f"the unpruned ones, e.g. {positions['mismatches'][:3]}")
        if not (positions["runner_passes_buffer"] and positions["lm_reads_buffer"]):
            problems.append(f"{mode}: the language model did not read the runner's positions buffer")
    if scenario != "mixed":  # long decodes: only positions are compared
        return problems
    graphs, eager, vanilla = (runs[m]["requests"] for m in MODES)
    for name, spec in (item for batch in MIXED for item in batch.items()):
        if not close(graphs[name], eager[name]):
            problems.append(f"{name}: graphs and eager answer differently")
        unpruned = spec[2] is None or (spec[2].get("method") == "none" and "pre_tower" not in spec[2])
        if unpruned and not close(graphs[name], vanilla[name]):
            problems.append(f"{name}: an unpruned request answers differently from vanilla vLLM")
        if unpruned and graphs[name]["prompt_tokens"] != vanilla[name]["prompt_tokens"]:
            problems.append(f"{name}: an unpruned request has a different prompt from vanilla vLLM")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("mixed", "reencode"), default="mixed")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    parser.add_argument("--model", help="a tiny Qwen3-VL checkpoint (default: build one under --work-dir)")
    parser.add_argument("--videos", type=Path, help="the generated test videos (default: under --work-dir)")
    parser.add_argument("--work-dir", type=Path, default=Path(".artifacts"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, args.scenario, args.model, args.videos, args.out)
        return 0
    from vllm_vtprune.testing.tiny_qwen3vl import build_tiny_qwen3vl
    from vllm_vtprune.testing.videos import video_suite

    model = args.model or str(build_tiny_qwen3vl(args.work_dir / "tiny"))
    video_dir = args.videos or args.work_dir / "videos"
    video_suite(video_dir)
    out = args.out or args.work_dir / "gpu-check"
    out.mkdir(parents=True, exist_ok=True)
    modes = args.modes.split(",")
    runs = {m: run(m, args.scenario, model, video_dir, out / f"{m}-{args.scenario}.json") for m in modes}
    for mode in modes:
        if runs[mode]["positions"]:
            print(f"{mode}: positions {json.dumps(runs[mode]['positions'])}")
    problems = compare(runs, args.scenario) if set(MODES) <= set(modes) else []
    print("\n".join(problems) or "gpu-check passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
