"""Records, inside a running vLLM engine, the M-RoPE positions the runner hands the language model, and checks
them against the positions each prompt would have unpruned.

For use in a process running vLLM in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): :func:`install` wraps

- V1 (CPU, and GPU with ``VLLM_USE_V2_MODEL_RUNNER=0``): ``GPUModelRunner._model_forward``, where the runner
  calls the model;
- V2 (GPU default): ``DefaultModelState.prepare_inputs``, which returns the positions buffer right before the
  forward (eager, piecewise or a FULL CUDA-graph replay);

and records, per step, the runner's persistent positions buffer at that moment (what a CUDA graph replays) and
which request and prompt index each row holds. It also records which tokens the plugin kept for every pruned
video. :func:`check` then compares every recorded row with :func:`oracle`: the stock Qwen3-VL positions of the
request's *unpruned* prompt gathered at the tokens it really holds (decode rows: the unpruned decode offset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from vllm_vtprune.layout import timestamp_ids


@dataclass
class Recording:
    steps: list[dict[str, Any]] = field(default_factory=list)  # {"buffer": [3, n], "rows": [(req, index, row)]}
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)  # req id -> prompt and features
    selections: dict[tuple, torch.Tensor] = field(default_factory=dict)  # (grid, timestamps, kept) -> mask
    encodes: dict[tuple, int] = field(default_factory=dict)
    resumed: set[str] = field(default_factory=set)  # requests whose prefill started over (preempted)
    furthest: dict[str, int] = field(default_factory=dict)
    lm_storage: list[int] = field(default_factory=list)
    buffer_storage: list[int] = field(default_factory=list)

    def add_rows(self, buffer: torch.Tensor, batch: list[tuple[str, int, int, int]], passed_buffer: bool) -> None:
        """``batch``: (request id, computed tokens, first row, rows) per request of the step."""
        rows = []
        for req_id, computed, first, count in batch:
            if computed < self.furthest.get(req_id, -1):
                self.resumed.add(req_id)
            self.furthest[req_id] = max(self.furthest.get(req_id, -1), computed)
            rows += [(req_id, computed + j, first + j) for j in range(count)]
        self.steps.append({"buffer": buffer.detach().cpu().clone(), "rows": rows, "passed_buffer": passed_buffer})


def _describe(prompt: list[int], mm_features) -> dict[str, Any]:
    from vllm_vtprune.layout import known_before_tower
    from vllm_vtprune.wire import KEPT_FIELD, PLAN_FIELD, decode_plan

    features = []
    for f in sorted(mm_features, key=lambda f: f.mm_position.offset):
        grid_key = "video_grid_thw" if f.modality == "video" else "image_grid_thw"
        d = {"modality": f.modality, "offset": f.mm_position.offset, "length": f.mm_position.length,
             "grid": f.data[grid_key].data.tolist()}
        if f.modality == "video":
            plan = decode_plan(f.data[PLAN_FIELD].data)
            d["kept"] = plan.kept
            d["timestamps"] = [float(x) for x in f.data["timestamps"].data]
            if known_before_tower(plan.settings.prune):  # chosen from the pixels in the API server
                d["cells"] = f.data[KEPT_FIELD].data.tolist()
        features.append(d)
    return {"prompt": list(prompt), "features": features}


def install(recording: Recording, *, lm_hook: bool = True) -> None:
    """Wrap the runners and the model so that ``recording`` fills as the engine runs."""
    from vllm.model_executor.models import qwen3_vl
    from vllm.v1.worker.gpu.model_states.default import DefaultModelState
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from vllm_vtprune.model import VtpruneMixin

    fill = VtpruneMixin._fill_middle

    def recording_fill(self, features, layout, selection, valid=None):
        mask = torch.zeros(layout.unpruned, dtype=torch.bool)
        mask[selection.kept.cpu()] = True
        key = (layout.grid, layout.timestamps, layout.kept)
        if key in recording.selections and not torch.equal(recording.selections[key], mask):
            raise AssertionError(f"a re-encode of a {key[0]} video selected different tokens")
        recording.selections[key] = mask
        recording.encodes[key] = recording.encodes.get(key, 0) + 1
        return fill(self, features, layout, selection, valid)

    VtpruneMixin._fill_middle = recording_fill

    v1_forward = GPUModelRunner._model_forward

    def v1_recording_forward(self, input_ids=None, positions=None, **kwargs):
        qsl = self.query_start_loc.cpu[: self.input_batch.num_reqs + 1].tolist()
        batch = []
        for i, req_id in enumerate(self.input_batch.req_ids):
            state = self.requests[req_id]
            recording.requests.setdefault(req_id, _describe(state.prompt_token_ids, state.mm_features))
            batch.append((req_id, int(self.input_batch.num_computed_tokens_cpu[i]), qsl[i], qsl[i + 1] - qsl[i]))
        buffer = self.mrope_positions.gpu
        recording.buffer_storage.append(buffer.untyped_storage().data_ptr())
        recording.add_rows(buffer[:, : positions.shape[-1]], batch,
                           positions.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr())
        return v1_forward(self, input_ids=input_ids, positions=positions, **kwargs)

    GPUModelRunner._model_forward = v1_recording_forward

    v2_add, v2_prepare = DefaultModelState.add_request, DefaultModelState.prepare_inputs

    def v2_recording_add(self, req_index, new_req_data):
        recording.requests[new_req_data.req_id] = _describe(new_req_data.prefill_token_ids,
                                                            new_req_data.mm_features)
        return v2_add(self, req_index, new_req_data)

    def v2_recording_prepare(self, input_batch, req_states):
        inputs = v2_prepare(self, input_batch, req_states)
        if "positions" in inputs and input_batch.req_ids and not input_batch.req_ids[0].startswith("req_"):
            qsl = input_batch.query_start_loc_np
            batch = [(req_id, int(input_batch.num_computed_tokens_np[i]), int(qsl[i]), int(qsl[i + 1] - qsl[i]))
                     for i, req_id in enumerate(input_batch.req_ids)]
            buffer = self.rope_state.positions
            recording.buffer_storage.append(buffer.untyped_storage().data_ptr())
            recording.add_rows(buffer[:, : inputs["positions"].shape[-1]], batch,
                               inputs["positions"].untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr())
        return inputs

    DefaultModelState.add_request, DefaultModelState.prepare_inputs = v2_recording_add, v2_recording_prepare

    if lm_hook:  # eager only: a compiled language model's forward is traced, so no Python may run inside it
        lm_forward = qwen3_vl.Qwen3LLMModel.forward

        def recording_lm_forward(self, input_ids, positions, *args, **kwargs):
            recording.lm_storage.append(positions.untyped_storage().data_ptr())
            return lm_forward(self, input_ids, positions, *args, **kwargs)

        qwen3_vl.Qwen3LLMModel.forward = recording_lm_forward


def oracle(request: dict[str, Any], selections: dict[tuple, torch.Tensor], config,
           tokenizer) -> tuple[torch.Tensor, int, bool]:
    """Stock Qwen3-VL positions of the unpruned prompt at the tokens this prompt holds, the decode offset, and
    whether the prompt has a pruned video."""
    from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration
    from vllm.multimodal.inputs import (
        MultiModalFeatureSpec,
        MultiModalFieldConfig,
        MultiModalFieldElem,
        MultiModalKwargsItem,
        PlaceholderRange,
    )

    merge = config.vision_config.spatial_merge_size
    prompt, unpruned, index_map, features, dynamic = request["prompt"], [], [], [], False
    cursor = 0
    for f in request["features"]:
        for j in range(cursor, f["offset"]):
            index_map.append(len(unpruned))
            unpruned.append(prompt[j])
        key = "video_grid_thw" if f["modality"] == "video" else "image_grid_thw"
        data = MultiModalKwargsItem({key: MultiModalFieldElem(
            data=torch.tensor(f["grid"]), field=MultiModalFieldConfig.batched(f["modality"]).field)})
        start = len(unpruned)
        body = prompt[f["offset"]:f["offset"] + f["length"]]
        t, h, w = f["grid"][0], f["grid"][1] // merge, f["grid"][2] // merge
        if f["modality"] == "video" and f["kept"] < t * h * w:
            dynamic = True
            timestamps = timestamp_ids(tokenizer, f["timestamps"])
            if "cells" in f:
                mask = torch.zeros(t * h * w, dtype=torch.bool)
                mask[f["cells"]] = True
            else:
                key = ((t, h, w), timestamps, f["kept"])
                if key not in selections:
                    raise AssertionError(f"no selection was recorded for a {t}x{h}x{w} video keeping {f['kept']}")
                mask = selections[key]
            mask = mask.view(t, h * w)
            body = []
            for s, timestamp in enumerate(timestamps):
                text = [*timestamp, config.vision_start_token_id]
                index_map += [start + len(body) + j for j in range(len(text))]
                body += text
                index_map += [start + len(body) + c for c in mask[s].nonzero().flatten().tolist()]
                body += [config.video_token_id] * (h * w)
                index_map.append(start + len(body))
                body.append(config.vision_end_token_id)
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


def check(recording: Recording, config, tokenizer) -> dict[str, Any]:
    """Compare every recorded row with the oracle; a JSON-able summary."""
    expected = {req_id: oracle(r, recording.selections, config, tokenizer)
                for req_id, r in recording.requests.items()}
    mismatches, checked, prefill_steps, mixed = [], 0, {}, 0
    for number, step in enumerate(recording.steps):
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
    buffers = set(recording.buffer_storage)
    return {"checked": checked, "mismatches": mismatches[:20], "num_mismatches": len(mismatches),
            "steps": len(recording.steps),
            "split_dynamic_prefills": sum(len(s) > 1 for s in prefill_steps.values()), "mixed_steps": mixed,
            "runner_passes_buffer": all(s["passed_buffer"] for s in recording.steps),
            "lm_reads_buffer": (not recording.lm_storage
                                or (set(recording.lm_storage) <= buffers and len(buffers) == 1)),
            "dynamic_videos": len(recording.selections),
            "reencoded_videos": sum(n > 1 for n in recording.encodes.values()),
            "preempted": len(recording.resumed)}
