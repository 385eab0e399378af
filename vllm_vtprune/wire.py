"""What a processed video item carries from the API server to the worker, and how it is read back.

The API server decides everything about a video once (its effective settings and how many tokens it keeps)
and ships it inside the item, so processor-cache hits, the engine core and every worker see the same thing.
Fields (``MultiModalFieldConfig.batched("video", keep_on_cpu=True)``):

- ``vtprune``: the item's plan as UTF-8 JSON bytes (uint8 tensor): ``{"settings": {...}, "kept": K,
  "stream_item": key?}``; decoded once per distinct value.
- ``vtprune_slice_keys``: int64 ``[T, 2]`` per-slice content keys for the slice cache; ``[0, 2]`` when unused.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import torch

from vllm_vtprune.settings import VtpruneSettings

PLAN_FIELD = "vtprune"
SLICE_KEYS_FIELD = "vtprune_slice_keys"
FIELDS = (PLAN_FIELD, SLICE_KEYS_FIELD)


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
