"""Model inputs for a (video, question) pair exactly as ``vllm serve`` builds them, for transformers.

Training and offline evaluation must see what the server will feed the model, or accuracy measured here
would not carry over to serving. So a clip goes through the same steps as a ``video_url`` request:

1. the mp4 bytes are decoded by vLLM's own video loader, chosen the way vLLM's media connector chooses it
   for ``Qwen3VLVideoProcessor`` (OpenCV, Qwen3-VL's 2-fps frame sampling, the same metadata);
2. the user message ``[video, text]`` is rendered with the checkpoint's chat template, generation prompt on;
3. HF's ``Qwen3VLProcessor`` processes the sampled frames with that metadata and ``do_sample_frames`` as
   vLLM passes it (smart resize, temporal pairing, a ``<t seconds>`` timestamp per slice in the prompt).

M-RoPE positions are then computed by transformers' Qwen3-VL from the token ids and the grid, as vLLM's.
``tests/accuracy`` checks the resulting prompt token ids against a running server's.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vllm_vtprune.testing.videos import write_mp4

if TYPE_CHECKING:
    import torch
    from transformers import Qwen3VLProcessor

IGNORE_INDEX = -100  # transformers' cross-entropy ignore label


def mp4_bytes(frames: np.ndarray, fps: float) -> bytes:
    """Encode frames as the same mp4v file :func:`write_mp4` writes, and return its bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_mp4(frames, Path(tmp) / "clip.mp4", fps)
        return path.read_bytes()


@functools.cache
def _vllm_video_io():
    from vllm.multimodal.media import ImageMediaIO, VideoMediaIO
    from vllm.multimodal.video import get_video_loader_backend_for_processor

    # As MediaConnector.fetch_video does for a Qwen3-VL checkpoint with no --media-io-kwargs.
    backend = get_video_loader_backend_for_processor("Qwen3VLVideoProcessor")
    return VideoMediaIO(ImageMediaIO(image_mode="RGB"), video_backend=backend)


def load_like_vllm(data: bytes) -> tuple[np.ndarray, dict]:
    """Decoded (sampled) RGB frames and the HF metadata dict, from vLLM's video loader."""
    frames, metadata = _vllm_video_io().load_bytes(data).media
    return frames, metadata


def chat_text(processor: Qwen3VLProcessor, text: str) -> str:
    """The prompt a chat request ``[video_url, text]`` renders to (no system message, generation prompt)."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode(processor: Qwen3VLProcessor, video: tuple[np.ndarray, dict], text: str,
           answer_id: int | None = None) -> dict[str, torch.Tensor]:
    """Processor outputs for one request; with ``answer_id``, the answer token is appended as the only label."""
    import torch
    from transformers.video_utils import VideoMetadata

    frames, metadata = video
    do_sample_frames = metadata.get("do_sample_frames", False)
    hf_metadata = VideoMetadata(**{k: v for k, v in metadata.items() if k != "do_sample_frames"})
    out = processor(text=[chat_text(processor, text)], videos=[frames], video_metadata=[hf_metadata],
                    do_sample_frames=do_sample_frames, return_tensors="pt")
    sample = {k: out[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values_videos",
                                  "video_grid_thw")}
    if answer_id is not None:
        one = torch.ones(1, 1, dtype=sample["input_ids"].dtype)
        sample["labels"] = torch.cat([torch.full_like(sample["input_ids"], IGNORE_INDEX), one * answer_id], 1)
        sample["input_ids"] = torch.cat([sample["input_ids"], one * answer_id], 1)
        sample["attention_mask"] = torch.cat([sample["attention_mask"], one], 1)
        sample["mm_token_type_ids"] = torch.cat([sample["mm_token_type_ids"], one * 0], 1)
    return sample


def collate(samples: list[dict[str, torch.Tensor]], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad token rows to the longest (right, or left for generation) and stack the videos' patches."""
    import torch

    length = max(s["input_ids"].shape[1] for s in samples)
    pads = {"input_ids": pad_id, "attention_mask": 0, "mm_token_type_ids": 0, "labels": IGNORE_INDEX}
    batch = {}
    for key, value in pads.items():
        if key not in samples[0]:
            continue
        rows = []
        for s in samples:
            fill = torch.full((1, length - s[key].shape[1]), value, dtype=s[key].dtype)
            rows.append(torch.cat([fill, s[key]] if left else [s[key], fill], 1))
        batch[key] = torch.cat(rows)
    batch["pixel_values_videos"] = torch.cat([s["pixel_values_videos"] for s in samples])
    batch["video_grid_thw"] = torch.cat([s["video_grid_thw"] for s in samples])
    return batch
