"""A least-recently-used cache bounded by the memory its entries take, not their count:
one run of 10,000 tasks weighs as much as thousands of small ones, and a cache bounded
by count let 25 of them grow a process by half a gigabyte."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SizedLRU(Generic[K, V]):
    """At most `max_bytes` of entries, as `weigh` estimates them; the least recently used
    go first. An entry heavier than the whole budget is not kept."""

    def __init__(self, max_bytes: int, weigh: Callable[[V], int]) -> None:
        self.max_bytes = max_bytes
        self._weigh = weigh
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V) -> None:
        self.pop(key)
        weight = self._weigh(value)
        if weight > self.max_bytes:
            return
        self._entries[key] = (value, weight)
        self.bytes += weight
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self.bytes -= entry[1]
        return entry[0]

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
