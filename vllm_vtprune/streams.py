"""Selection state that follows a stream across requests (STC's history anchor, the temporal stage's
previous slice), kept per worker process and bounded, so an abandoned stream cannot grow memory."""

from __future__ import annotations

from collections import OrderedDict

from vllm_vtprune.core import StreamState

MAX_STREAMS = 1024


class StreamStates:
    def __init__(self, max_streams: int = MAX_STREAMS) -> None:
        self.max_streams = max_streams
        self._states: OrderedDict[str, StreamState] = OrderedDict()

    def get(self, stream_id: str | None, method: str) -> StreamState | None:
        """The stream's state, unless the stream switched methods (state is per method)."""
        state = self._states.get(stream_id) if stream_id is not None else None
        if state is None or state.method != method:
            return None
        self._states.move_to_end(stream_id)
        return state

    def put(self, stream_id: str | None, state: StreamState | None) -> None:
        if stream_id is None or state is None:
            return
        self._states[stream_id] = state
        self._states.move_to_end(stream_id)
        while len(self._states) > self.max_streams:
            self._states.popitem(last=False)

    def clear(self) -> None:
        self._states.clear()
