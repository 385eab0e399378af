"""Selection state that follows a stream across requests (STC's history anchor, the temporal stage's previous
slice), kept per worker on the CPU under a byte budget.

Reproducible: vLLM may encode a video again (encoder-cache eviction, preemption, a prefix hit that starts in
the middle of it), and rows of both encodes end up in one prompt, so both must select the same tokens. An
item's selection therefore depends only on the state its stream had *before that item's first encode*: the
store remembers, per stream, the state before each of its last ``HISTORY`` items, and advancing with an item
it has seen is a no-op. A request whose method or options differ from its stream's state starts the stream
afresh (its state could not be used: e.g. STC's memory has as many channels as the options keep).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from vllm_vtprune.bounded import BoundedLRU
from vllm_vtprune.core import StreamState

HISTORY = 8  # items per stream whose input state is remembered for re-encodes


@dataclass(frozen=True)
class _Stream:
    signature: str  # the method and options the state belongs to
    state: StreamState | None  # after the latest item
    before: tuple[tuple[str, StreamState | None], ...]  # (item, state before it), oldest first


def _tensors(state: StreamState | None) -> list[torch.Tensor]:
    if state is None:
        return []
    return [v for f in fields(state) if isinstance(v := getattr(state, f.name), torch.Tensor)]


def _on_cpu(state: StreamState | None) -> StreamState | None:
    if state is None:
        return None
    moved = {f.name: v.to("cpu") if isinstance(v := getattr(state, f.name), torch.Tensor) else v
             for f in fields(state)}
    return StreamState(**moved)


def _bytes(stream_id: str, stream: _Stream) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for s in (stream.state, *(b for _, b in stream.before)) for t in _tensors(s)}
    return len(stream_id.encode()) + sum(storages.values())


class StreamStore:
    def __init__(self, max_bytes: int, on_change: Callable[[StreamStore], None] | None = None) -> None:
        self._streams: BoundedLRU[_Stream] = BoundedLRU(max_bytes, _bytes)
        self.resets = 0
        self._on_change = on_change  # metrics: called after every change

    @property
    def bytes_used(self) -> int:
        return self._streams.bytes_used

    def __len__(self) -> int:
        return len(self._streams)

    def state_for(self, stream_id: str, signature: str, item: str) -> StreamState | None:
        """The state ``item`` selects with: the one before its first encode, or the stream's latest."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.signature != signature:
            return None
        return next((before for key, before in stream.before if key == item), stream.state)

    def advance(self, stream_id: str, signature: str, item: str, before: StreamState | None,
                after: StreamState | None) -> None:
        """Record that ``item`` moved the stream from ``before`` to ``after`` (once per item)."""
        stream = self._streams.get(stream_id)
        history: tuple[tuple[str, StreamState | None], ...] = ()
        if stream is not None:
            if stream.signature == signature:
                if any(key == item for key, _ in stream.before):
                    return
                history = stream.before
            else:
                self.resets += 1
        history = (*history, (item, _on_cpu(before)))[-HISTORY:]
        self._streams.put(stream_id, _Stream(signature, _on_cpu(after), history))
        self._changed()

    def drop(self, stream_id: str) -> None:
        self._streams.pop(stream_id)
        self.resets += 1
        self._changed()

    def clear(self) -> None:
        self._streams.clear()
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)
