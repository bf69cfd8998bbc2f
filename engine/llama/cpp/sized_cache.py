"""A least-recently-used cache bounded by entry count and by the bytes its entries hold.

A count alone does not bound memory when callers choose the entries' size: 256 compiled grammars of
4 MiB schemas would pin gigabytes. Thread-safe: preparation runs in worker threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SizedCache(Generic[K, V]):
    def __init__(self, *, max_entries: int, max_bytes: int, size_of: Callable[[K, V], int]) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        """The cached value of `key`, or `make()`'s, kept if it fits. `make` runs outside the lock (two
        threads may make the same value once each); what it raises is not cached."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit[0]
        value = make()
        size = self._size_of(key, value)
        if size > self.max_bytes:
            return value  # never kept: it would evict everything else
        with self._lock:
            if key not in self._entries:
                self._entries[key] = (value, size)
                self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
        return value

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
