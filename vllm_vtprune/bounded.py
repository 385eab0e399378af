"""A least-recently-used store bounded by bytes and by entry count: every per-client store of the plugin."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class BoundedLRU(Generic[V]):
    """``put`` evicts least-recently-used entries until ``bytes_used <= max_bytes`` and ``len <= max_entries``;
    an entry larger than ``max_bytes`` is not stored. ``get`` and ``put`` refresh recency. ``size_of`` gives an
    entry's bytes (keys included by the caller where they can be large). Not thread-safe: a vLLM worker runs the
    model on one thread, and the API server's processor runs on the event loop's thread."""

    def __init__(self, max_bytes: int, size_of: Callable[[Hashable, V], int], max_entries: int | None = None,
                 on_evict: Callable[[Hashable, V], None] | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.max_entries = max_entries
        self._size_of = size_of
        self._on_evict = on_evict
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self.bytes_used = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        return list(self._entries)

    def get(self, key: Hashable) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def pop(self, key: Hashable) -> V | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self.bytes_used -= entry[1]
        return entry[0]

    def put(self, key: Hashable, value: V) -> bool:
        """Store ``value``; False (nothing stored, any older entry for ``key`` dropped) if it cannot fit."""
        self.pop(key)
        size = self._size_of(key, value)
        if size > self.max_bytes or self.max_entries == 0:
            return False
        while self._entries and (self.bytes_used + size > self.max_bytes
                                 or (self.max_entries is not None and len(self._entries) >= self.max_entries)):
            old_key, (old, old_size) = self._entries.popitem(last=False)
            self.bytes_used -= old_size
            self.evictions += 1
            if self._on_evict is not None:
                self._on_evict(old_key, old)
        self._entries[key] = (value, size)
        self.bytes_used += size
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.bytes_used = 0
