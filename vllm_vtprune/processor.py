"""Qwen3-VL's multimodal processor with each video's placeholder sized by its pruning settings.

Runs in the API server (and in the engine core for profiling). For every video it
- resolves the request's effective settings (server settings + ``mm_processor_kwargs["vtprune"]``) once and
  rejects an invalid override with a ``ValueError``, which vLLM answers with HTTP 400;
- decides the video's layout (``layout``) and ships it with the item (``wire``), so processor-cache hits and
  the worker see the same;
- mixes the settings into the item's hash, so two requests with the same video and different settings never
  share an encoder-cache or prefix-cache entry.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from vllm.model_executor.models.qwen3_vl import Qwen3VLMultiModalProcessor, Qwen3VLProcessingInfo
from vllm.multimodal.hasher import MultiModalHasher
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import PromptReplacement, PromptUpdateDetails

from vllm_vtprune.core.pixels import PixelNorm
from vllm_vtprune.core.pretower import select_pretower
from vllm_vtprune.cpu_threads import one_thread
from vllm_vtprune.layout import (
    TokenIds,
    VideoLayout,
    known_before_tower,
    plan_layout,
    text_row_allowance,
    timestamp_ids,
)
from vllm_vtprune.log import get_logger
from vllm_vtprune.metrics import VideoAccount, api_server_metrics
from vllm_vtprune.settings import REQUEST_KEY, VtpruneSettings, server_settings
from vllm_vtprune.vision import slice_key_salt, slice_keys
from vllm_vtprune.wire import (
    KEPT_FIELD,
    PLAN_FIELD,
    ROWS_FIELD,
    SLICE_KEYS_FIELD,
    SOURCE_FIELD,
    ItemPlan,
    decode_plan,
    empty_slice_keys,
    no_pre_tower,
)

logger = get_logger(__name__)

_PROFILING = contextvars.ContextVar("vtprune_profiling", default=False)  # vLLM's dummy requests: not counted




def llm_grid(video_grid_thw: Sequence[int], merge_size: int) -> tuple[int, int, int]:
    t, h, w = (int(v) for v in video_grid_thw)
    return t, h // merge_size, w // merge_size


class TextRowAllowance:
    """Mixed into a Qwen3-VL-family processing info: the extra encoder-budget rows a pruned video may need."""

    def text_row_allowance(self) -> int:
        processor = self.get_video_processor()
        return text_row_allowance(self.get_tokenizer(), processor.max_frames // processor.temporal_patch_size)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        # A pruned video's placeholder may carry text rows as embeddings (layout.py): reserve room for them
        # in vLLM's encoder budget so that every video vanilla vLLM accepts is accepted.
        tokens = dict(super().get_mm_max_tokens_per_item(seq_len, mm_counts))
        if "video" in tokens:
            tokens["video"] += self.text_row_allowance()
        return tokens


@functools.cache
def with_text_row_allowance(info: type[Qwen3VLProcessingInfo]) -> type[Qwen3VLProcessingInfo]:
    """``info`` (an architecture's processing info) with :class:`TextRowAllowance`."""
    return type(f"Vtprune{info.__name__}", (TextRowAllowance, info), {})


class VtpruneQwen3VLProcessor(Qwen3VLMultiModalProcessor):
    def get_dummy_mm_inputs(self, *args, **kwargs):
        token = _PROFILING.set(True)
        try:
            return super().get_dummy_mm_inputs(*args, **kwargs)
        finally:
            _PROFILING.reset(token)

    @property
    def _merge(self) -> int:
        return self.info.get_hf_config().vision_config.spatial_merge_size

    def apply(self, inputs, timing_ctx):
        started = time.perf_counter()
        result = super().apply(inputs, timing_ctx)
        if result["mm_kwargs"].get("video") and not _PROFILING.get():
            api_server_metrics().processor_seconds.observe(time.perf_counter() - started)
        extra_positions = 0  # how much further the unpruned prompt reaches than this one
        accounts = api_server_metrics().accounts
        for item, mm_hash in zip(result["mm_kwargs"].get("video", []), result["mm_hashes"].get("video", [])):
            if item is not None:
                accounts.put(mm_hash, video_account(item, self._merge))
            account = accounts.get(mm_hash)
            if account is None:
                logger.warning("vtprune: no record of cached video %s; not counted", mm_hash)
                continue
            extra_positions += account.unpruned - account.kept
            logger.debug("vtprune: video %s: %s keeps %d of %d tokens", mm_hash, account.method, account.kept,
                         account.unpruned)
        limit = self.info.get_hf_config().text_config.max_position_embeddings
        needed = len(result["prompt_token_ids"]) + extra_positions
        if needed > limit:
            raise ValueError(f"the unpruned prompt would need {needed} positions; this model has {limit} "
                             "(pruned tokens keep their original positions)")
        return result

    def _effective_settings(self, hf_kwargs: Mapping[str, object]) -> VtpruneSettings:
        merged = self.info._merge_and_resolve_mm_processor_kwargs(hf_kwargs)
        return server_settings().merged(merged.get(REQUEST_KEY))

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
        if "video_grid_thw" not in processed:
            return processed
        started = time.perf_counter()
        with one_thread():
            processed.update(self._plan_videos(processed, settings))
        if not _PROFILING.get():
            api_server_metrics().plugin_seconds.observe(time.perf_counter() - started)
        return processed

    def _plan_videos(self, processed, settings: VtpruneSettings) -> dict[str, Any]:
        """The plugin's fields of every video item (and the pixel rows to ship, when a pre-tower stage cuts)."""
        if _PROFILING.get() and settings.prune.pre_tower is not None:
            # vLLM profiles the tower's peak memory with these dummies: run it on every token.
            settings = dataclasses.replace(settings, prune=dataclasses.replace(settings.prune, pre_tower=None))
        grids = processed["video_grid_thw"].tolist()
        tokenizer = self.info.get_tokenizer()
        allowance = self.info.text_row_allowance()
        server = server_settings()
        pixels = processed["pixel_values_videos"].split([t * h * w for t, h, w in grids])
        out = {name: [] for name in (PLAN_FIELD, SLICE_KEYS_FIELD, KEPT_FIELD, SOURCE_FIELD, ROWS_FIELD)}
        shipped = []
        for grid, timestamps, px in zip(grids, processed["timestamps"], pixels):
            kept, source = no_pre_tower(), no_pre_tower()
            if settings.prune.pre_tower is not None:
                selection = select_pretower(px, [grid], [settings.prune.pre_tower], merge_size=self._merge,
                                            norm=self._pixel_norm(px))[0]
                kept, source = selection.kept, selection.slice_source
                px = px[selection.pixel_rows(self._merge)]  # only the kept tokens' pixels go to the worker
            cells = kept.tolist() if known_before_tower(settings.prune) else None
            layout = plan_layout(llm_grid(grid, self._merge), timestamps, settings.prune, tokenizer, allowance,
                                 cells)
            if settings.prune != server.prune:
                server_layout = plan_layout(llm_grid(grid, self._merge), timestamps, server.prune, tokenizer,
                                            allowance)
                server.check_budget(layout.kept, server_layout.kept)
            out[PLAN_FIELD].append(ItemPlan(settings, layout.kept, self._stream_item(settings, px)).encode())
            out[SLICE_KEYS_FIELD].append(self._slice_keys(px, grid, settings) if not kept.numel()
                                         else empty_slice_keys())
            out[KEPT_FIELD].append(kept)
            out[SOURCE_FIELD].append(source)
            out[ROWS_FIELD].append(torch.tensor([px.shape[0]]))
            shipped.append(px)
        if settings.prune.pre_tower is not None:  # otherwise every row ships: no copy of the pixels
            out["pixel_values_videos"] = torch.cat(shipped)
        return out

    def _pixel_norm(self, pixels: torch.Tensor) -> PixelNorm | None:
        """How the processor normalised the rows a pre-tower method scores (none: vLLM normalises on the
        device and ships 8-bit levels)."""
        if pixels.dtype == torch.uint8:
            return None
        processor = self.info.get_video_processor()
        return PixelNorm(tuple(processor.image_mean), tuple(processor.image_std), processor.rescale_factor)

    def _stream_item(self, settings: VtpruneSettings, pixels: torch.Tensor) -> str | None:
        """Names the item within its stream, so a video encoded twice advances its stream once (stateful
        methods only: their selection depends on the stream's history)."""
        if settings.stream_id is None or not settings.prune.stateful:
            return None
        return slice_keys(pixels, [1, pixels.shape[0], 1], settings.to_json().encode()).numpy().tobytes().hex()

    def _slice_keys(self, pixels: torch.Tensor, grid: list[int], settings: VtpruneSettings) -> torch.Tensor:
        """Per-slice content keys, hashed here where the pixels already are. None are made for vLLM's profiling
        dummies (their identical slices would otherwise be computed once and hide the tower's peak memory)."""
        if not (settings.slice_cache and settings.slice_cache_mb > 0) or _PROFILING.get():
            return empty_slice_keys()
        model_config = self.info.ctx.model_config
        return slice_keys(pixels, grid, slice_key_salt(model_config.model, model_config.revision))

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        for name in (PLAN_FIELD, SLICE_KEYS_FIELD, KEPT_FIELD, SOURCE_FIELD, ROWS_FIELD):
            fields[name] = MultiModalFieldConfig.batched("video", keep_on_cpu=True)
        if ROWS_FIELD in hf_inputs:  # a pre-tower stage ships fewer rows than the grid holds
            rows = torch.cat(list(hf_inputs[ROWS_FIELD]))
            fields["pixel_values_videos"] = MultiModalFieldConfig.flat_from_sizes("video", rows)
        return fields

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, self._without_ours(hf_processor_mm_kwargs), out_mm_kwargs)
        ids = TokenIds.from_hf_config(self.info.get_hf_config())
        tokenizer = self.info.get_tokenizer()

        def video_replacement(item_idx: int) -> PromptUpdateDetails:
            layout = item_layout(out_mm_kwargs["video"][item_idx], tokenizer, self._merge)
            # Exact: only pads carry embeddings, as in vLLM. Dynamic: the pads are exactly the middle.
            return PromptUpdateDetails.select_token_id(layout.prompt_ids(ids), ids.video_pad)

        return [
            PromptReplacement(modality="video", target=u.target, replacement=video_replacement)
            if u.modality == "video" else u
            for u in updates
        ]


def item_layout(data: Mapping[str, Any], tokenizer, merge: int) -> VideoLayout:
    """The layout the processor decided for a processed video item (the same in the API server and worker)."""
    plan = decode_plan(data[PLAN_FIELD].data)
    cells = tuple(data[KEPT_FIELD].data.tolist()) if known_before_tower(plan.settings.prune) else None
    return VideoLayout(llm_grid(data["video_grid_thw"].data.tolist(), merge),
                       timestamp_ids(tokenizer, data["timestamps"].data), plan.kept, cells)


def video_account(item: Mapping[str, Any], merge: int) -> VideoAccount:
    plan = decode_plan(item[PLAN_FIELD].data)
    t, h, w = llm_grid(item["video_grid_thw"].data.tolist(), merge)
    return VideoAccount(plan.settings.prune.method, t * h * w, plan.kept)
