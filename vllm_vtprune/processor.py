"""Qwen3-VL's multimodal processor, sizing each video's placeholder from the pruning budget.

Runs in the API server (and in the engine core for profiling). For every video it
- resolves the request's effective settings (server settings + ``mm_processor_kwargs["vtprune"]``), and
  rejects an invalid override with a ``ValueError``, which vLLM answers with HTTP 400;
- ships them with the item (field ``vtprune_config``), so processor-cache hits and the worker see the same;
- mixes their digest into the item's hash, so two requests with the same video and different settings never
  share an encoder-cache or prefix-cache entry;
- lays the placeholder out exactly as Qwen3-VL does (per slice: timestamp, vision start, pads, vision end),
  with the *total* number of pads fixed by the budget. The whole range carries embeddings (timestamps
  included), because methods may move pads between slices after the tower; the model fills it.
"""

from __future__ import annotations

import contextvars
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from vllm.model_executor.models.qwen3_vl import Qwen3VLMultiModalProcessor
from vllm.multimodal.hasher import MultiModalHasher
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import PromptReplacement

from vllm_vtprune.core import PruneConfig, total_budget
from vllm_vtprune.log import get_logger
from vllm_vtprune.metrics import api_server_metrics
from vllm_vtprune.settings import REQUEST_KEY, VtpruneSettings, settings_from_env
from vllm_vtprune.vision import slice_key_salt, slice_keys

logger = get_logger(__name__)

CONFIG_FIELD = "vtprune_config"
SLICE_KEYS_FIELD = "vtprune_slice_keys"  # int64 [T, 2] content key per temporal slice; [0, 2] when unused


def encode_settings(settings: VtpruneSettings) -> torch.Tensor:
    return torch.frombuffer(bytearray(settings.to_json().encode()), dtype=torch.uint8)


def decode_settings(data: torch.Tensor) -> VtpruneSettings:
    return VtpruneSettings.from_dict(json.loads(bytes(data.tolist()).decode()))


def nominal_split(total: int, num_slices: int, capacity: int) -> list[int]:
    """An even split of ``total`` pads over the slices, for the prompt's token ids only: the model may
    move pads between slices (the range is filled with embeddings as a whole)."""
    base, extra = divmod(total, num_slices)
    split = [base + (t < extra) for t in range(num_slices)]
    assert max(split) <= capacity
    return split


def llm_grid(video_grid_thw: Sequence[int], merge_size: int) -> tuple[int, int, int]:
    t, h, w = (int(v) for v in video_grid_thw)
    return t, h // merge_size, w // merge_size


@dataclass(frozen=True)
class VideoAccount:
    method: str
    unpruned: int
    kept: int


class _Accounts:
    """What each video item's placeholder holds, by item hash. On a processor-cache hit the API server gets
    the item back without its data (the engine core holds that), so the grid is read from here instead.
    2**16 entries outlast every item the processor cache can hold (video items are megabytes, it holds 4 GiB)."""

    def __init__(self, capacity: int = 2**16) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, VideoAccount] = OrderedDict()

    def put(self, mm_hash: str, account: VideoAccount) -> None:
        self._items[mm_hash] = account
        self._items.move_to_end(mm_hash)
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def get(self, mm_hash: str) -> VideoAccount | None:
        return self._items.get(mm_hash)


ACCOUNTS = _Accounts()
_PROFILING = contextvars.ContextVar("vtprune_profiling", default=False)  # vLLM's dummy requests: not counted


class VtpruneQwen3VLProcessor(Qwen3VLMultiModalProcessor):
    def get_dummy_mm_inputs(self, *args, **kwargs):
        token = _PROFILING.set(True)
        try:
            return super().get_dummy_mm_inputs(*args, **kwargs)
        finally:
            _PROFILING.reset(token)

    def apply(self, inputs, timing_ctx):
        result = super().apply(inputs, timing_ctx)
        merge = self.info.get_hf_config().vision_config.spatial_merge_size
        extra_positions = 0  # how much further the unpruned prompt reaches than this one
        for item, mm_hash in zip(result["mm_kwargs"].get("video", []), result["mm_hashes"].get("video", [])):
            if item is not None:
                prune = decode_settings(item[CONFIG_FIELD].data).prune
                t, h, w = llm_grid(item["video_grid_thw"].data.tolist(), merge)
                ACCOUNTS.put(mm_hash, VideoAccount(prune.method, t * h * w, total_budget((t, h, w), prune)))
            account = ACCOUNTS.get(mm_hash)
            if account is None:
                logger.warning("vtprune: no record of cached video %s; not counted", mm_hash)
                continue
            extra_positions += account.unpruned - account.kept
            if not _PROFILING.get():
                api_server_metrics().record_video(account.method, account.unpruned, account.kept)
            logger.debug("vtprune: video %s: %s keeps %d of %d tokens", mm_hash, account.method, account.kept,
                         account.unpruned)
        limit = self.info.get_hf_config().text_config.max_position_embeddings
        if len(result["prompt_token_ids"]) + extra_positions > limit:
            raise ValueError(f"the unpruned prompt would need {len(result['prompt_token_ids']) + extra_positions} "
                             f"positions; this model has {limit} (pruned tokens keep their original positions)")
        return result

    def _effective_settings(self, hf_kwargs: Mapping[str, object]) -> VtpruneSettings:
        merged = self.info._merge_and_resolve_mm_processor_kwargs(hf_kwargs)
        return (settings_from_env() or VtpruneSettings()).merged(merged.get(REQUEST_KEY))

    @staticmethod
    def _without_ours(hf_kwargs: Mapping[str, object]) -> dict[str, object]:
        return {k: v for k, v in hf_kwargs.items() if k != REQUEST_KEY}

    def _get_mm_hashes(self, inputs):
        hashes = dict(super()._get_mm_hashes(inputs))
        if "video" in hashes:
            digest = self._effective_settings(inputs.hf_processor_mm_kwargs).to_json()
            algorithm = self.info.ctx.get_mm_config().mm_hasher_algorithm
            hashes["video"] = [
                MultiModalHasher.hash_kwargs(algorithm, mm_hash=h, vtprune=digest) for h in hashes["video"]
            ]
        return hashes

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        settings = self._effective_settings(hf_kwargs)
        processed = super()._apply_hf_processor_main(mm_items, self._without_ours(hf_kwargs))
        if "video_grid_thw" in processed:
            merge = self.info.get_hf_config().vision_config.spatial_merge_size
            grids = processed["video_grid_thw"].tolist()
            for grid in grids:  # fail here, with a 400, not in the worker
                total_budget(llm_grid(grid, merge), settings.prune)
            processed[CONFIG_FIELD] = [encode_settings(settings)] * len(grids)
            processed[SLICE_KEYS_FIELD] = self._slice_keys(processed["pixel_values_videos"], grids, settings)
        return processed

    def _slice_keys(self, pixels: torch.Tensor, grids: list[list[int]], settings: VtpruneSettings):
        """Per-slice content keys, hashed here where the pixels already are. None are made for vLLM's profiling
        dummies (their identical slices would otherwise be computed once and hide the tower's peak memory)."""
        if not (settings.slice_cache and settings.slice_cache_mb > 0) or _PROFILING.get():
            return [torch.zeros(0, 2, dtype=torch.int64) for _ in grids]
        model_config = self.info.ctx.model_config
        salt = slice_key_salt(model_config.model, model_config.revision)
        rows = [t * h * w for t, h, w in grids]
        return [slice_keys(p, g, salt) for p, g in zip(pixels.split(rows), grids)]

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        fields[CONFIG_FIELD] = MultiModalFieldConfig.batched("video", keep_on_cpu=True)
        fields[SLICE_KEYS_FIELD] = MultiModalFieldConfig.batched("video", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = list(super()._get_prompt_updates(mm_items, self._without_ours(hf_processor_mm_kwargs),
                                                   out_mm_kwargs))
        hf_config = self.info.get_hf_config()
        tokenizer = self.info.get_tokenizer()
        merge = hf_config.vision_config.spatial_merge_size

        def pruned_video_replacement(item_idx: int):
            item = out_mm_kwargs["video"][item_idx]
            settings = decode_settings(item[CONFIG_FIELD].data)
            t, h, w = llm_grid(item["video_grid_thw"].data.tolist(), merge)
            split = nominal_split(total_budget((t, h, w), settings.prune), t, h * w)
            return self.get_video_repl(
                tokens_per_frame=split,
                timestamps=item["timestamps"].data,
                tokenizer=tokenizer,
                vision_start_token_id=hf_config.vision_start_token_id,
                vision_end_token_id=hf_config.vision_end_token_id,
                video_token_id=hf_config.video_token_id,
                select_token_id=False,  # the whole range carries embeddings
            )

        return [
            PromptReplacement(modality="video", target=u.target, replacement=pruned_video_replacement)
            if u.modality == "video" else u
            for u in updates
        ]


def item_prune_config(data: Mapping[str, Any]) -> PruneConfig | None:
    """The pruning config carried by a processed video item, or None for items we did not process."""
    field = data.get(CONFIG_FIELD) if hasattr(data, "get") else None
    return None if field is None else decode_settings(field.data).prune
