"""What a processed video item carries from the API server to the worker, and how it is read back.

The API server decides everything about a video once (its effective settings and how many tokens it keeps)
and ships it inside the item, so processor-cache hits, the engine core and every worker see the same thing.
Fields (``MultiModalFieldConfig.batched("video", keep_on_cpu=True)``):

- ``vtprune``: the item's plan as UTF-8 JSON bytes (uint8 tensor): ``{"settings": {...}, "kept": K,
  "stream_item": key?}``; decoded once per distinct value.
- ``vtprune_slice_keys``: int64 ``[T, 2]`` per-slice content keys for the slice cache; ``[0, 2]`` when unused.
- ``vtprune_kept``: int64 ``[B1]``, the tokens a pre-tower stage kept (``t*H*W + g``, ascending); empty for a
  video with no pre-tower stage. Only these tokens' pixel rows cross to the worker.
- ``vtprune_slice_source``: int64 ``[T]``, -1 or the earlier slice whose kept pixels a slice repeats exactly
  (computed once in the worker); empty with no pre-tower stage.
- ``vtprune_pixel_rows``: int64 ``[1]``, the rows of ``pixel_values_videos`` the item ships.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import torch

from vllm_vtprune.settings import VtpruneSettings

PLAN_FIELD = "vtprune"
SLICE_KEYS_FIELD = "vtprune_slice_keys"
KEPT_FIELD = "vtprune_kept"
SOURCE_FIELD = "vtprune_slice_source"
ROWS_FIELD = "vtprune_pixel_rows"
FIELDS = (PLAN_FIELD, SLICE_KEYS_FIELD, KEPT_FIELD, SOURCE_FIELD, ROWS_FIELD)


@dataclass(frozen=True)
class ItemPlan:
    settings: VtpruneSettings
    kept: int  # tokens the video keeps (all of them for an exact layout)
    stream_item: str | None = None  # identifies the item within its stream (stateful methods only)

    def encode(self) -> torch.Tensor:
        d = {"settings": self.settings.to_dict(), "kept": self.kept}
        if self.stream_item is not None:
            d["stream_item"] = self.stream_item
        return torch.frombuffer(bytearray(json.dumps(d, sort_keys=True).encode()), dtype=torch.uint8)


@functools.lru_cache(maxsize=1024)
def _decode(raw: bytes) -> ItemPlan:
    d = json.loads(raw.decode())
    return ItemPlan(VtpruneSettings.from_dict(d["settings"]), int(d["kept"]), d.get("stream_item"))


def decode_plan(data: torch.Tensor) -> ItemPlan:
    return _decode(data.numpy().tobytes())


def empty_slice_keys() -> torch.Tensor:
    return torch.zeros(0, 2, dtype=torch.int64)


def no_pre_tower() -> torch.Tensor:
    return torch.zeros(0, dtype=torch.int64)
