"""Per-stream state carried from one chunk (request) of a video stream to the next.

vLLM requests are stateless, so streaming methods get their memory back from the caller: ``select_tokens``
returns an updated ``StreamState`` per video and takes it again with the stream's next chunk. It holds small,
detached tensors on the features' device and is safe to keep across requests (it never aliases the features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StreamState:
    """Memory of one video stream for one method.

    method: registry name of the method that produced it; handing it to another method is an error.
    last_slice: [H, W, C] in the features' dtype, the previous chunk's last temporal slice, unpruned. MSSAVT's
        temporal stage compares the next chunk's first slice with it, as TimeChat-Online's DTD compares each
        frame with the full previous frame.
    last_slice_valid: bool [H, W], the positions of ``last_slice`` that the vision tower computed when that chunk
        was a partial grid (two stages; ``last_slice`` is zero elsewhere), or None when all of them were.
    memory_sum, memory_count: STC-Pruner's memory of chunk means, kept as a running sum [C'] fp32 and a count so
        that the state stays O(C) however long the stream (the official pruner keeps the list of means and
        averages it; the result is the same up to float rounding).
    """

    method: str
    last_slice: torch.Tensor | None = None
    last_slice_valid: torch.Tensor | None = None
    memory_sum: torch.Tensor | None = None
    memory_count: int = 0

    def __post_init__(self) -> None:
        for name in ("last_slice", "last_slice_valid", "memory_sum"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, value.detach())
