"""Qwen3-VL with video-token pruning: the one place that owns vLLM's invariants.

Registered by the plugin under vLLM's own architecture name, so everything else (weights, LoRA, images,
DeepStack, the language model) is inherited. What changes:
- ``embed_multimodal``: after the vision tower, the configured method picks the tokens each video keeps;
  the video's placeholder range is filled with its timestamps/markers and the kept rows (DeepStack
  channels gathered with the same indices), plus position-offset channels (see ``positions``);
- ``get_mrope_input_positions``: unpruned positions for everything outside pruned ranges, and the unpruned
  decode offset, computed at request start from the grid alone;
- ``embed_input_ids``/``forward``: strip the offset channels and add the offsets to the positions of the rows
  they belong to, the way vLLM stages DeepStack rows (a persistent buffer consumed by the next forward).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import torch
from vllm.distributed import get_pp_group, get_tensor_model_parallel_rank
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from vllm_vtprune.core import select_tokens
from vllm_vtprune.log import get_logger
from vllm_vtprune.metrics import WorkerMetrics
from vllm_vtprune.patches import encoder_cache_reset
from vllm_vtprune.positions import OFFSET_CHANNELS, decode_offsets, encode_offsets, prompt_index_map
from vllm_vtprune.processor import (
    CONFIG_FIELD,
    SLICE_KEYS_FIELD,
    VtpruneQwen3VLProcessor,
    decode_settings,
    llm_grid,
)
from vllm_vtprune.settings import VtpruneSettings, settings_from_env
from vllm_vtprune.streams import StreamStates
from vllm_vtprune.timing import StageTimer
from vllm_vtprune.vision import VideoEncoder

logger = get_logger(__name__)


@MULTIMODAL_REGISTRY.register_processor(
    VtpruneQwen3VLProcessor, info=Qwen3VLProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class VtpruneQwen3VLForConditionalGeneration(Qwen3VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = "model"):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if self.is_multimodal_pruning_enabled:
            raise ValueError("--plugin vtprune replaces vLLM's --video-pruning-rate; drop that flag")
        if self.use_data_parallel:
            raise ValueError("--plugin vtprune does not support --mm-encoder-tp-mode data")
        if get_pp_group().world_size > 1:
            raise ValueError("--plugin vtprune does not support pipeline parallelism yet; use tensor parallelism")
        self.merge_size = self.visual.spatial_merge_size
        # Offsets of the rows in the next forward's batch; non-zero only on rows of pruned video ranges.
        self.position_offsets = torch.zeros(3, vllm_config.scheduler_config.max_num_batched_tokens,
                                            dtype=torch.long)
        self.position_offsets_num_tokens = 0
        self.streams = StreamStates()
        server = settings_from_env() or VtpruneSettings()
        # The slice cache lives on the CPU: vLLM's memory profiler does not see it, so it must not take device memory.
        self.video_encoder = VideoEncoder(self.visual, cache_bytes=server.slice_cache_mb * 2**20, cache_device="cpu")
        encoder_cache_reset.apply()
        # One observation per encoder batch: tensor-parallel ranks all run the tower, rank 0 reports it.
        self.metrics = WorkerMetrics.from_env() if get_tensor_model_parallel_rank() == 0 else None

    def reset_vtprune_caches(self) -> None:
        """Called with vLLM's encoder-cache reset (see patches/encoder_cache_reset.py)."""
        self.video_encoder.clear()
        self.streams.clear()

    def get_encoder_cudagraph_config(self):
        # Captured encoder graphs bypass embed_multimodal, which now appends offset channels to every item.
        return dataclasses.replace(super().get_encoder_cudagraph_config(), modalities=[])

    # ---- after the vision tower -------------------------------------------------------------------
    def embed_multimodal(self, **kwargs: object):
        configs = kwargs.pop(CONFIG_FIELD, None)
        keys = kwargs.pop(SLICE_KEYS_FIELD, None)
        inputs = self._parse_and_validate_multimodal_inputs(**kwargs)
        embeddings: list[torch.Tensor] = []
        for modality, modality_input in inputs.items():
            if modality == "image":
                for e in self._process_image_input(modality_input):
                    embeddings.append(torch.cat([e, e.new_zeros(e.shape[0], OFFSET_CHANNELS)], dim=-1))
            elif modality == "video":
                embeddings.extend(self._embed_videos(modality_input, configs, keys))
        return tuple(embeddings)

    def _embed_videos(self, video_input, configs, keys) -> list[torch.Tensor]:
        grids_thw = video_input["video_grid_thw"].tolist()
        settings = [decode_settings(c) for c in configs]
        timer = StageTimer(video_input["video_grid_thw"].device)
        features = self._run_tower(video_input, grids_thw, settings, keys)
        timer.mark("tower")
        selections = select_tokens(
            torch.cat([f[:, : self.visual_dim] for f in features]),
            [llm_grid(g, self.merge_size) for g in grids_thw],
            [s.prune for s in settings],
            [self.streams.get(s.stream_id, s.prune.method) for s in settings],
        )
        timer.mark("selection")
        for s, sel in zip(settings, selections):
            self.streams.put(s.stream_id, sel.state)
        out = [
            self._fill_video_range(f, sel.kept, sel.per_slice.tolist(), grid, ts)
            for f, sel, grid, ts in zip(features, selections, grids_thw, video_input["timestamps"])
        ]
        seconds = timer.seconds()  # after .tolist() above has synchronised the device anyway
        if self.metrics is not None:
            self.metrics.tower_seconds.observe(seconds["tower"])
            self.metrics.selection_seconds.observe(seconds["selection"])
        if logger.isEnabledFor(logging.DEBUG):
            # The digest lets tensor-parallel ranks be compared: each runs the tower and must select alike.
            digest = hashlib.sha1(b"".join(sel.kept.cpu().numpy().tobytes() for sel in selections)).hexdigest()[:12]
            logger.debug("vtprune: rank %d, %d video(s), tokens %s -> %s, tower %.1f ms, selection %.1f ms, "
                         "selection digest %s", get_tensor_model_parallel_rank(), len(out),
                         [f.shape[0] for f in features], [sel.kept.numel() for sel in selections],
                         seconds["tower"] * 1e3, seconds["selection"] * 1e3, digest)
        return out

    def _run_tower(self, video_input, grids_thw, settings, keys) -> list[torch.Tensor]:
        """Tower outputs per video, reusing work where the settings allow: exact per-slice cache hits and
        STC-Cacher's selective recomputation."""
        if video_input["type"] != "pixel_values_videos":  # precomputed embeddings: no tower to save
            return list(self._process_video_input(video_input))
        if keys is None:  # a list, or one stacked tensor when every video has the same number of slices
            keys = [None] * len(settings)
        keys = [k if k is not None and k.numel() else None for k in keys]
        features, stats = self.video_encoder.encode(
            video_input["pixel_values_videos"], grids_thw, [s.cacher for s in settings], keys,
            [s.slice_cache for s in settings],
        )
        if self.metrics is not None:
            self.metrics.record_encode(stats)
        return features

    def _fill_video_range(self, features, kept, per_slice, grid_thw, timestamps) -> torch.Tensor:
        """The rows of one video's placeholder range: timestamps/markers as text embeddings, kept tokens
        (main and DeepStack channels), and each row's position offset from the range's first token."""
        mask = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
        mask[kept] = True
        rows = self._create_final_video_embeddings(
            video_embeddings=features[kept], num_tokens_per_frame=per_slice, timestamps=timestamps,
            video_grid_thw=grid_thw, retention_mask=mask,
        )
        offsets = self.range_offsets(per_slice, grid_thw, timestamps, mask)
        return torch.cat([rows, encode_offsets(offsets, rows.dtype)], dim=-1)

    def range_offsets(self, per_slice: list[int], grid_thw, timestamps, mask: torch.Tensor) -> torch.Tensor:
        """``[L, 3]`` unpruned (t, h, w) position of each row of the range, relative to its first token."""
        repl = torch.tensor(self._video_repl(per_slice, timestamps), device=mask.device)
        return self._get_expanded_positions(
            device=mask.device, seq_len=repl.numel(), video_grid_thw=grid_thw,
            num_tokens_per_frame=per_slice, timestamps=timestamps,
            is_video_embed=repl == self.config.video_token_id,
            is_vision_start=repl == self.config.vision_start_token_id, retention_mask=mask,
        )[:, :3]

    def _video_repl(self, tokens_per_frame: list[int], timestamps) -> list[int]:
        return Qwen3VLMultiModalProcessor.get_video_repl(
            tokens_per_frame=tokens_per_frame, timestamps=timestamps, tokenizer=self._tokenizer,
            vision_start_token_id=self.config.vision_start_token_id,
            vision_end_token_id=self.config.vision_end_token_id,
            video_token_id=self.config.video_token_id,
        ).full

    # ---- positions --------------------------------------------------------------------------------
    def get_mrope_input_positions(self, input_tokens, mm_features):
        features = sorted(mm_features, key=lambda f: f.mm_position.offset)
        if not any(self._is_pruned(f) for f in features):
            return super().get_mrope_input_positions(input_tokens, mm_features)
        # Rebuild the unpruned prompt, let Qwen3-VL place it, then read each pruned token's position off it.
        unpruned, unpruned_features, spans, cursor, shift = [], [], [], 0, 0
        for f in features:
            offset, length = f.mm_position.offset, f.mm_position.length
            body = input_tokens[offset:offset + length]
            if self._is_pruned(f):
                t, h, w = llm_grid(f.data["video_grid_thw"].data.tolist(), self.merge_size)
                body = self._video_repl([h * w] * t, f.data["timestamps"].data)
                spans.append((offset, length, len(body)))
            unpruned += input_tokens[cursor:offset] + body
            position = dataclasses.replace(f.mm_position, offset=offset + shift, length=len(body))
            unpruned_features.append(dataclasses.replace(f, mm_position=position))
            shift += len(body) - length
            cursor = offset + length
        unpruned += input_tokens[cursor:]
        positions, _ = super().get_mrope_input_positions(unpruned, unpruned_features)
        delta = int(positions.max()) + 1 - len(input_tokens)
        return positions[:, prompt_index_map(len(input_tokens), spans)], delta

    @staticmethod
    def _is_pruned(feature) -> bool:
        return feature.modality == "video" and feature.data is not None and CONFIG_FIELD in feature.data

    # ---- before the language model ----------------------------------------------------------------
    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        if multimodal_embeddings is None or len(multimodal_embeddings) == 0:
            return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal)
        offsets = decode_offsets(torch.cat([e[:, -OFFSET_CHANNELS:] for e in multimodal_embeddings]))
        embeds = super().embed_input_ids(
            input_ids, [e[:, :-OFFSET_CHANNELS] for e in multimodal_embeddings], is_multimodal=is_multimodal
        )
        num_tokens = input_ids.shape[0]
        if num_tokens > self.position_offsets.shape[1]:
            self.position_offsets = self.position_offsets.new_zeros(3, num_tokens)
        staged = self.position_offsets[:, :num_tokens]
        staged.zero_()
        staged[:, is_multimodal] = offsets.to(staged.device)
        self.position_offsets_num_tokens = num_tokens
        return embeds

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if self.position_offsets_num_tokens:
            n = min(self.position_offsets_num_tokens, positions.shape[-1])
            positions = positions.clone()
            positions[:, :n] += self.position_offsets[:, :n]
            self.position_offsets[:, :n].zero_()
            self.position_offsets_num_tokens = 0
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
