"""Runs vLLM in this process with the plugin and records the positions its runner hands the language model.

``python runner_probe.py MODEL VIDEO_DIR OUT.json``: serves a mixed batch (pruned and unpruned videos, an image,
text only) with prefills split across steps, then a second round whose video KV comes from the prefix cache.
For every forward it records, at the moment the runner calls the model (before any model Python runs: what a
FULL CUDA-graph replay reads) the positions in the runner's persistent buffer, and whether the language model
receives that very storage. Expected positions are the stock Qwen3-VL positions of each prompt's *unpruned* form,
gathered at the tokens the request really kept (read from the model's selections). Runs in a subprocess of the
test so vLLM's global state stays out of pytest's process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # a fixed KV size: no check against the machine's free memory

PLUGIN = {"method": "vcast", "retention": 0.25}
ROUND_1 = [  # (video kind or None, image?, per-request vtprune settings or None, question)
    ("moving_objects", False, {"method": "vcast", "retention": 0.25}, "What happens?"),
    ("slow_pan", False, {"method": "stc", "retention": 0.3}, "Where does it pan?"),
    ("scene_cut", False, {"method": "none"}, "Is there a cut?"),
    (None, True, None, "Describe the image."),
    (None, False, None, "Count from zero."),
]
ROUND_2 = [("moving_objects", False, {"method": "vcast", "retention": 0.25}, "Describe the motion in detail.")]


def frames_of(path: Path):
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


def request(kind, image, vt, question, videos):
    import numpy as np

    parts, data = "", {}
    if kind is not None:
        parts += "<|vision_start|><|video_pad|><|vision_end|>"
        data["video"] = [frames_of(videos[kind])]
    if image:
        parts += "<|vision_start|><|image_pad|><|vision_end|>"
        data["image"] = [np.full((64, 96, 3), 120, np.uint8)]
    prompt = f"<|im_start|>user\n{parts}{question}<|im_end|>\n<|im_start|>assistant\n"
    out = {"prompt": prompt}
    if data:
        out["multi_modal_data"] = data
    if vt is not None:
        out["mm_processor_kwargs"] = {"vtprune": vt}
    return out


def main(model: str, video_dir: str, out_path: str) -> None:
    import torch
    from vllm import LLM, SamplingParams
    from vllm.model_executor.models import qwen3_vl
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from vllm_vtprune.model import VtpruneQwen3VLForConditionalGeneration
    from vllm_vtprune.testing.videos import video_suite
    from vllm_vtprune.wire import PLAN_FIELD, decode_plan

    videos = video_suite(Path(video_dir))
    selections = {}  # (grid, timestamps, kept) -> kept mask, captured from the model
    steps = []
    lm_storage = []

    fill = VtpruneQwen3VLForConditionalGeneration._fill_middle

    def recording_fill(self, features, layout, selection):
        mask = torch.zeros(layout.unpruned, dtype=torch.bool)
        mask[selection.kept.cpu()] = True
        key = (layout.grid, layout.timestamps, layout.kept)
        if key in selections and not torch.equal(selections[key], mask):
            raise AssertionError(f"a re-encode of {key[0]} selected different tokens")
        selections[key] = mask
        return fill(self, features, layout, selection)

    forward = GPUModelRunner._model_forward
    requests = {}  # vLLM request id -> what the oracle needs of it

    def describe(state):
        features = []
        for f in sorted(state.mm_features, key=lambda f: f.mm_position.offset):
            grid_key = "video_grid_thw" if f.modality == "video" else "image_grid_thw"
            d = {"modality": f.modality, "offset": f.mm_position.offset, "length": f.mm_position.length,
                 "grid": f.data[grid_key].data.tolist()}
            if f.modality == "video":
                d["timestamps"] = [float(x) for x in f.data["timestamps"].data]
                d["kept"] = decode_plan(f.data[PLAN_FIELD].data).kept
            features.append(d)
        return {"prompt": list(state.prompt_token_ids), "features": features}

    def recording_forward(self, input_ids=None, positions=None, **kwargs):
        n = positions.shape[-1]
        rows = []
        qsl = self.query_start_loc.cpu[: self.input_batch.num_reqs + 1].tolist()
        for i, req_id in enumerate(self.input_batch.req_ids):
            requests.setdefault(req_id, describe(self.requests[req_id]))
            computed = int(self.input_batch.num_computed_tokens_cpu[i])
            rows += [(req_id, computed + j, qsl[i] + j) for j in range(qsl[i + 1] - qsl[i])]
        steps.append({"buffer": self.mrope_positions.gpu[:, :n].clone(), "rows": rows,
                      "is_buffer": positions.untyped_storage().data_ptr()
                      == self.mrope_positions.gpu.untyped_storage().data_ptr()})
        return forward(self, input_ids=input_ids, positions=positions, **kwargs)

    lm_forward = qwen3_vl.Qwen3LLMModel.forward

    def recording_lm_forward(self, input_ids, positions, *args, **kwargs):
        lm_storage.append(positions.untyped_storage().data_ptr())
        return lm_forward(self, input_ids, positions, *args, **kwargs)

    VtpruneQwen3VLForConditionalGeneration._fill_middle = recording_fill
    GPUModelRunner._model_forward = recording_forward
    qwen3_vl.Qwen3LLMModel.forward = recording_lm_forward

    llm = LLM(model=model, max_model_len=8192, enforce_eager=True, limit_mm_per_prompt={"video": 1, "image": 1},
              max_num_batched_tokens=160, max_num_seqs=8, additional_config={"vtprune": PLUGIN})
    runner = llm.llm_engine.model_executor.driver_worker.worker.model_runner
    config = runner.get_model().config
    params = SamplingParams(max_tokens=4, temperature=0)
    cached = []
    for batch in (ROUND_1, ROUND_2):
        for o in llm.generate([request(*r, videos) for r in batch], params, use_tqdm=False):
            cached.append(o.num_cached_tokens)

    expected = {req_id: oracle(r, selections, config) for req_id, r in requests.items()}
    mismatches, checked, prefill_steps, mixed = [], 0, {}, 0
    for number, step in enumerate(steps):
        kinds = set()
        for req_id, index, row in step["rows"]:
            positions, delta, dynamic = expected[req_id]
            n = positions.shape[1]
            want = positions[:, index].tolist() if index < n else [index + delta] * 3
            got = step["buffer"][:, row].tolist()
            checked += 1
            if want != got:
                mismatches.append({"req": req_id, "index": index, "want": want, "got": got})
            if index < n:
                kinds.add(dynamic)
                if dynamic:
                    prefill_steps.setdefault(req_id, set()).add(number)
        mixed += kinds == {True, False}
    split = [r for r, numbers in prefill_steps.items() if len(numbers) > 1]
    json.dump({"checked": checked, "mismatches": mismatches[:20], "num_mismatches": len(mismatches),
               "steps": len(steps), "split_dynamic_prefills": len(split), "mixed_steps": mixed,
               "runner_passes_buffer": all(s["is_buffer"] for s in steps),
               "lm_reads_buffer": all(p == runner.mrope_positions.gpu.untyped_storage().data_ptr()
                                      for p in lm_storage) and len(lm_storage) == len(steps),
               "dynamic_videos": len(selections), "cached_tokens": cached}, open(out_path, "w"))


def oracle(r, selections, config):
    """Stock Qwen3-VL positions of the unpruned prompt, gathered at the tokens this prompt really holds."""
    import torch
    from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration
    from vllm.multimodal.inputs import (
        MultiModalFeatureSpec,
        MultiModalFieldConfig,
        MultiModalFieldElem,
        MultiModalKwargsItem,
        PlaceholderRange,
    )

    prompt, unpruned, index_map, features, dynamic = r["prompt"], [], [], [], False
    cursor = 0
    for f in r["features"]:
        for j in range(cursor, f["offset"]):
            index_map.append(len(unpruned))
            unpruned.append(prompt[j])
        key = "video_grid_thw" if f["modality"] == "video" else "image_grid_thw"
        data = MultiModalKwargsItem({key: MultiModalFieldElem(
            data=torch.tensor(f["grid"]), field=MultiModalFieldConfig.batched(f["modality"]).field)})
        start = len(unpruned)
        body = prompt[f["offset"]:f["offset"] + f["length"]]
        t, h, w = f["grid"][0], f["grid"][1] // 2, f["grid"][2] // 2
        if f["modality"] == "video" and f["kept"] < t * h * w:
            dynamic = True
            layouts = [k for k in selections if k[0] == (t, h, w) and k[2] == f["kept"]]
            assert len(layouts) == 1, layouts
            mask = selections[layouts[0]].view(t, h * w)
            timestamps = layouts[0][1]
            full = []
            for s in range(t):
                text = [*timestamps[s], config.vision_start_token_id]
                index_map += [start + len(full) + j for j in range(len(text))]
                full += text
                index_map += [start + len(full) + c for c in mask[s].nonzero().flatten().tolist()]
                full += [config.video_token_id] * (h * w)
                index_map.append(start + len(full))
                full.append(config.vision_end_token_id)
            body = full
        else:
            index_map += [start + j for j in range(len(body))]
        unpruned += body
        features.append(MultiModalFeatureSpec(data, f["modality"], str(start), PlaceholderRange(start, len(body))))
        cursor = f["offset"] + f["length"]
    for j in range(cursor, len(prompt)):
        index_map.append(len(unpruned))
        unpruned.append(prompt[j])
    positions, delta = Qwen3VLForConditionalGeneration._get_mrope_input_positions(unpruned, features, config)
    return positions[:, index_map], delta + len(unpruned) - len(prompt), dynamic


if __name__ == "__main__":
    main(*sys.argv[1:4])
