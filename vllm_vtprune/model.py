"""The Qwen3-VL family with video-token pruning: the one place that owns vLLM's invariants.

One behaviour (:class:`VtpruneMixin`) on each of vLLM's four Qwen3-VL-family models (Qwen3-VL, Qwen3-VL-MoE,
Qwen3.5, Qwen3.5-MoE: one vision tower, processor and M-RoPE code), registered under vLLM's own architecture
names, so everything else (weights, LoRA, images, DeepStack where the model has it, the language model,
hybrid attention state, CUDA graphs) is inherited. What changes:
- ``embed_multimodal``: the tower runs in micro-batches no larger than vLLM profiled, then the configured method
  picks the tokens each video keeps; an exact layout gets the tower rows as vLLM would, a dynamic one its
  middle (kept rows, DeepStack channels gathered with the same indices, the text between slices) with each
  row's position channels (see ``mrope``);
- ``get_mrope_input_positions`` / ``recompute_mrope_positions``: vLLM's own hooks for pruned media; every kept
  token gets its unpruned position inside the runner's per-request position state, which is what the
  language model and CUDA graphs read. The model keeps no per-batch state of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable

import torch
from vllm.distributed import get_pp_group, get_tensor_model_parallel_rank
from vllm.model_executor.models.qwen3_5 import (
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3_5MoeProcessingInfo,
    Qwen3_5ProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration, Qwen3VLMoeProcessingInfo
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.utils.gpu_sync_debug import gpu_sync_allowed

from vllm_vtprune.core import Selection, select_tokens
from vllm_vtprune.core.selection import gather_rows, kept_mask, uniform_selection
from vllm_vtprune.layout import TokenIds, VideoLayout, known_before_tower, timestamp_ids
from vllm_vtprune.log import get_logger
from vllm_vtprune.metrics import WorkerMetrics
from vllm_vtprune.mrope import digits_for, encode_rows, middle_plan, recompute_positions, request_positions
from vllm_vtprune.processor import VtpruneQwen3VLProcessor, item_layout, llm_grid, with_text_row_allowance
from vllm_vtprune.settings import server_settings
from vllm_vtprune.streams import StreamStore
from vllm_vtprune.timing import StageTimer
from vllm_vtprune.vision import EncodeStats, VideoEncoder
from vllm_vtprune.vision.subset_tower import run_subset_tower
from vllm_vtprune.wire import (
    FIELDS,
    KEPT_FIELD,
    PLAN_FIELD,
    ROWS_FIELD,
    SLICE_KEYS_FIELD,
    SOURCE_FIELD,
    ItemPlan,
    decode_plan,
)

logger = get_logger(__name__)

# Test-only: place every middle row at its middle's first position, as if the offsets were lost.
ZERO_OFFSETS_ENV = "VLLM_VTPRUNE_TEST_ZERO_POSITION_OFFSETS"


class VtpruneMixin:
    """The plugin's behaviour on a Qwen3-VL-family model (see the module docstring). Rows are sized by
    ``visual_dim + multiscale_dim`` (no DeepStack columns on Qwen3.5), and neither ``embed_input_ids`` nor
    ``forward`` is touched (Qwen3.5 replaces both)."""

    def __init__(self, *, vllm_config, prefix: str = ""):  # vLLM reads both names off the signature
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if not self.is_multimodal_pruning_enabled:
            raise ValueError("--plugin vtprune needs vLLM's multimodal-pruning hooks, which the plugin turns on "
                             "itself; it was not activated for this engine")
        if self.use_data_parallel:
            raise ValueError("--plugin vtprune does not support --mm-encoder-tp-mode data")
        if get_pp_group().world_size > 1:
            raise ValueError("--plugin vtprune does not support pipeline parallelism yet; use tensor parallelism")
        self.merge_size = self.visual.spatial_merge_size
        self.ids = TokenIds.from_hf_config(self.config)
        self.plain_width = self.visual_dim + self.multiscale_dim
        model_config = vllm_config.model_config
        self.position_digits = digits_for(max(self.config.text_config.max_position_embeddings,
                                              model_config.max_model_len))
        self.zero_offsets = os.environ.get(ZERO_OFFSETS_ENV) == "1"
        # One observation per encoder batch: tensor-parallel ranks all run the tower, rank 0 reports it.
        self.metrics = WorkerMetrics.from_env() if get_tensor_model_parallel_rank() == 0 else None
        server = server_settings()
        self.streams = StreamStore(server.stream_state_mb * 2**20,
                                   on_change=self.metrics.record_streams if self.metrics is not None else None)
        # The slice cache lives on the CPU: vLLM's memory profiler does not see it, so it must not take device memory.
        self.video_encoder = VideoEncoder(self.visual, cache_bytes=server.slice_cache_mb * 2**20, cache_device="cpu")
        self.max_tower_patches = _profiled_tower_patches(vllm_config, self.merge_size)

    def reset_vtprune_caches(self) -> None:
        """Called with vLLM's encoder-cache reset (see patches/encoder_cache_reset.py)."""
        self.video_encoder.clear()
        self.streams.clear()

    def get_encoder_cudagraph_config(self):
        # Captured encoder graphs bypass embed_multimodal: fine for images (their embeddings are vLLM's own),
        # not for videos. vLLM turns them off for both whenever its pruning hooks are on.
        return dataclasses.replace(super().get_encoder_cudagraph_config(), modalities=["image"])

    # ---- after the vision tower -------------------------------------------------------------------
    def embed_multimodal(self, **kwargs: object):
        ours = {name: kwargs.pop(name, None) for name in FIELDS}
        inputs = self._parse_and_validate_multimodal_inputs(**kwargs)
        embeddings: list[torch.Tensor] = []
        for modality, modality_input in inputs.items():
            if modality == "image":
                embeddings.extend(self._process_image_input(modality_input))
            elif modality == "video":
                embeddings.extend(self._embed_videos(modality_input, _videos(modality_input, ours)))
        return tuple(embeddings)

    def _embed_videos(self, video_input, videos: list[_Video]) -> list[torch.Tensor]:
        timer = StageTimer(video_input["video_grid_thw"].device)
        encodes: list[EncodeStats] = []
        features = self._run_tower(video_input, videos, encodes)
        timer.mark("tower")
        layouts = [video.layout(self._tokenizer, self.merge_size) for video in videos]
        # A two-stage video's features are the rows of the tokens its pre-tower stage kept.
        valid = [kept_mask(v.kept, layout.grid).to(f.device) if v.kept is not None else None
                 for v, layout, f in zip(videos, layouts, features)]
        selections = [self._select(f, layout, video.plan, mask)
                      for f, layout, video, mask in zip(features, layouts, videos, valid)]
        timer.mark("selection")
        out = [f if layout.exact else self._fill_middle(f, layout, sel, mask)
               for f, layout, sel, mask in zip(features, layouts, selections, valid)]
        seconds = timer.seconds()  # after the selections' .tolist() has synchronised the device anyway
        if self.metrics is not None:
            self.metrics.tower_seconds.observe(seconds["tower"])
            self.metrics.selection_seconds.observe(seconds["selection"])
            for stats in encodes:  # their tower times are readable now that the device has finished
                self.metrics.record_encode(stats)
        if logger.isEnabledFor(logging.DEBUG):
            # The digest lets tensor-parallel ranks be compared: each runs the tower and must select alike.
            kept = [sel.kept.cpu().numpy().tobytes() for sel in selections if sel is not None]
            logger.debug("vtprune: rank %d, %d video(s), tokens %s -> %s, tower %.1f ms, selection %.1f ms, "
                         "selection digest %s", get_tensor_model_parallel_rank(), len(out),
                         [f.shape[0] for f in features], [layout.kept for layout in layouts],
                         seconds["tower"] * 1e3, seconds["selection"] * 1e3,
                         hashlib.sha1(b"".join(kept)).hexdigest()[:12])
        return out

    def _run_tower(self, video_input, videos: list[_Video], encodes: list[EncodeStats] | None = None
                   ) -> list[torch.Tensor]:
        """Tower outputs per video, in passes no larger than the patches vLLM profiled (the scheduler charges a
        pruned video its placeholder, far fewer rows than the tower computes). A video pruned before the tower
        runs on its kept tokens only; the others reuse work where their settings allow (exact per-slice cache
        hits, STC-Cacher's selective recomputation)."""
        if video_input["type"] != "pixel_values_videos":  # precomputed embeddings: no tower to save
            return list(self._process_video_input(video_input))
        pixels = video_input["pixel_values_videos"].split([video.rows for video in videos])
        features: list[torch.Tensor] = []
        for group in _passes([video.rows for video in videos], self.max_tower_patches,
                             [video.kept is not None for video in videos]):
            px = torch.cat([pixels[i] for i in group]) if len(group) > 1 else pixels[group[0]]
            batch = [videos[i] for i in group]
            grids = [video.grid_thw for video in batch]
            if batch[0].kept is not None:
                kept = [video.kept.to(px.device) for video in batch]
                out = run_subset_tower(self.visual, px, grids, kept, [video.source for video in batch])
                features.extend(out.split([k.numel() for k in kept]))
                if self.metrics is not None:
                    self.metrics.record_subset_tower(sum(v.unpruned_patches for v in batch), px.shape[0])
                continue
            try:
                out, stats = self.video_encoder.encode(px, grids, [v.plan.settings.cacher for v in batch],
                                                       [v.slice_keys for v in batch],
                                                       [v.plan.settings.slice_cache for v in batch])
            except Exception:  # the reuse paths depend on request settings: never let them take the engine down
                logger.exception("vtprune: vision-tower reuse failed on %d video(s); running the stock tower",
                                 len(batch))
                if self.metrics is not None:
                    self.metrics.tower_fallbacks.inc()
                out = list(self.visual(px, grid_thw=grids).split([t * h * w // self.merge_size**2
                                                                  for t, h, w in grids]))
                stats = None
            features.extend(out)
            if encodes is not None and stats is not None:
                encodes.append(stats)
        return features

    def _select(self, features: torch.Tensor, layout: VideoLayout, plan: ItemPlan,
                valid: torch.Tensor | None) -> Selection | None:
        """The video's kept tokens (None for an exact layout of a stateless config: nothing to choose).

        Never raises: a method that fails on a request would take the engine down for every client, and the
        placeholder is already sized, so the video falls back to an evenly spaced selection of the same size
        and its stream starts afresh."""
        cfg = plan.settings.prune
        stream = plan.settings.stream_id if plan.stream_item is not None else None
        if layout.exact and stream is None:
            return None
        signature = json.dumps({"method": cfg.method, "options": dict(cfg.options)}, sort_keys=True)
        before = self.streams.state_for(stream, signature, plan.stream_item) if stream is not None else None
        try:
            selection = select_tokens(features[:, :self.visual_dim], [layout.grid], [cfg], [before],
                                      [layout.kept], valid=[valid])[0]
        except Exception:
            logger.exception("vtprune: method %r failed on a video of grid %s; using an evenly spaced selection",
                             cfg.method, layout.grid)
            if self.metrics is not None:
                self.metrics.selection_fallbacks.inc()
            selection = uniform_selection(layout.grid, layout.kept, valid.cpu() if valid is not None else None,
                                          min_tokens_per_slice=cfg.min_tokens_per_slice)
            selection = dataclasses.replace(selection, kept=selection.kept.to(features.device))
            if stream is not None:
                self.streams.drop(stream)
                return selection
        if stream is not None:
            self.streams.advance(stream, signature, plan.stream_item, before, selection.state)
        return selection

    def _fill_middle(self, features: torch.Tensor, layout: VideoLayout, selection: Selection,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
        """The rows of a dynamic middle: kept tokens (main and DeepStack channels) and the text between slices,
        each followed by its position channels (``mrope``). ``valid``: the tokens ``features`` holds rows of
        (a pre-tower stage's), if not all."""
        is_video, offsets, text_ids = middle_plan(layout, selection.per_slice, selection.kept, self.ids)
        rows = features.new_zeros(is_video.numel(), self.plain_width)
        rows[is_video] = gather_rows(features, selection, valid)
        if text_ids:
            text = self.language_model.embed_input_ids(torch.tensor(text_ids, device=features.device))
            rows[~is_video, :self.visual_dim] = text.to(rows.dtype)
        index = torch.arange(is_video.numel(), device=features.device).unsqueeze(1)
        channels = encode_rows(torch.cat([offsets, index], 1), self.position_digits, rows.dtype)
        return torch.cat([rows, channels], 1)

    # ---- positions --------------------------------------------------------------------------------
    def _layout_of(self, feature) -> VideoLayout | None:
        data = feature.data
        if feature.modality != "video" or data is None or PLAN_FIELD not in data:
            return None
        return item_layout(data, self._tokenizer, self.merge_size)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        stock = super().get_mrope_input_positions
        if all(layout is None or layout.kept == layout.unpruned for layout in map(self._layout_of, mm_features)):
            return stock(input_tokens, mm_features)
        return request_positions(input_tokens, mm_features, self._layout_of, self.ids, stock)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        with gpu_sync_allowed():
            stripped, delta, placed = recompute_positions(
                input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens,
                plain_width=self.plain_width, digits=self.position_digits, ids=self.ids,
                zero_offsets=self.zero_offsets,
            )
        if not placed:
            logger.warning("vtprune: could not place pruned video rows at %d computed tokens; they keep their "
                           "video's first position", num_computed_tokens)
            if self.metrics is not None:
                self.metrics.unplaced_rows.inc()
        return stripped, mrope_positions, delta


def _profiled_tower_patches(vllm_config, merge_size: int) -> int:
    """Patches of the largest video batch vLLM's memory profiling runs through the tower: as many of the largest
    video as its encoder budget schedules at once (``MultiModalBudget``, as the model runner computes it)."""
    from vllm.multimodal.encoder_budget import MultiModalBudget

    budget = MultiModalBudget(vllm_config, MULTIMODAL_REGISTRY, enable_cache=False)
    items = budget.mm_max_items_per_batch.get("video", 1)
    tokens = budget.processor.info.get_max_video_tokens(vllm_config.model_config.max_model_len, {"video": 1})
    return max(1, items) * tokens * merge_size**2


def _passes(patches: list[int], limit: int, kinds: list[object] | None = None) -> list[list[int]]:
    """Consecutive videos grouped so each group's patches stay within ``limit`` (a larger video goes alone:
    vLLM profiled at least one video of the largest size) and holds one ``kind`` of tower run."""
    kinds = kinds or [None] * len(patches)
    passes: list[list[int]] = []
    total = 0
    for i, n in enumerate(patches):
        if passes and total + n <= limit and kinds[passes[-1][0]] == kinds[i]:
            passes[-1].append(i)
            total += n
        else:
            passes.append([i])
            total = n
    return passes


@dataclasses.dataclass
class _Video:
    """One video of an encoder batch, with what the processor shipped for it (``wire``)."""

    grid_thw: list[int]
    timestamps: object
    plan: ItemPlan
    rows: int  # pixel rows shipped
    slice_keys: torch.Tensor | None
    kept: torch.Tensor | None  # tokens a pre-tower stage kept (None: no pre-tower stage)
    source: torch.Tensor | None

    @property
    def unpruned_patches(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w

    def layout(self, tokenizer, merge_size: int) -> VideoLayout:
        cells = tuple(self.kept.tolist()) if self.kept is not None and known_before_tower(self.plan.settings.prune) \
            else None
        return VideoLayout(llm_grid(self.grid_thw, merge_size), timestamp_ids(tokenizer, self.timestamps),
                           self.plan.kept, cells)


def _videos(video_input, fields: dict[str, object]) -> list[_Video]:
    """The batch's videos with the plugin's fields (lists per video; a tensor stacked when shapes agree)."""
    grids = video_input["video_grid_thw"].tolist()

    def per_video(name):
        values = fields.get(name)
        return [None] * len(grids) if values is None else list(values)

    videos = []
    for grid, ts, plan, keys, kept, source, rows in zip(grids, video_input["timestamps"], per_video(PLAN_FIELD),
                                                         per_video(SLICE_KEYS_FIELD), per_video(KEPT_FIELD),
                                                         per_video(SOURCE_FIELD), per_video(ROWS_FIELD)):
        pre_tower = kept is not None and kept.numel() > 0
        videos.append(_Video(
            grid, ts, decode_plan(plan), int(rows) if rows is not None else grid[0] * grid[1] * grid[2],
            keys if keys is not None and keys.numel() else None,
            kept if pre_tower else None, source if pre_tower else None,
        ))
    return videos


def _with_plugin_processor(info: type) -> Callable[[type], type]:
    """Register the plugin's processor, with the architecture's own processing info, on a model class (a
    subclass otherwise keeps its parent's registration)."""
    return MULTIMODAL_REGISTRY.register_processor(
        VtpruneQwen3VLProcessor, info=with_text_row_allowance(info), dummy_inputs=Qwen3VLDummyInputsBuilder
    )


@_with_plugin_processor(Qwen3VLProcessingInfo)
class VtpruneQwen3VLForConditionalGeneration(VtpruneMixin, Qwen3VLForConditionalGeneration):
    pass


@_with_plugin_processor(Qwen3VLMoeProcessingInfo)
class VtpruneQwen3VLMoeForConditionalGeneration(VtpruneMixin, Qwen3VLMoeForConditionalGeneration):
    pass


@_with_plugin_processor(Qwen3_5ProcessingInfo)
class VtpruneQwen3_5ForConditionalGeneration(VtpruneMixin, Qwen3_5ForConditionalGeneration):
    pass


@_with_plugin_processor(Qwen3_5MoeProcessingInfo)
class VtpruneQwen3_5MoeForConditionalGeneration(VtpruneMixin, Qwen3_5MoeForConditionalGeneration):
    pass
