"""A bounded map with approximate-LRU eviction in generations (the route cache's and the pins' memory).

Entries live in about :data:`GENERATIONS` plain dicts of at most ``max_entries / GENERATIONS`` entries
each (:func:`generation_size`); new and used entries go to the newest. When the map holds more than ``max_entries``, entries
are dropped from the oldest generation (``dict.popitem``, O(1)); a hit in an older generation moves
the entry to the newest. So the map never holds more than ``max_entries``, keeps exactly that many
once full, and an entry used at least once per ``max_entries * (GENERATIONS - 1) / GENERATIONS``
newer entries is never evicted. Within the oldest generation the order of eviction is unspecified.

A plain dict costs about 50 bytes per entry; an OrderedDict (exact LRU) about 100.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")
GENERATIONS = 4


def generation_size(max_entries: int) -> int:
    """Entries per generation: about ``max_entries / GENERATIONS``, rounded down to what a dict with a
    power-of-two table holds before it grows (2/3 of the table: 21,845 for 100,000 entries), so no
    generation pays for a table twice its size. (One more generation may then be needed.)"""
    share = max(1, max_entries // GENERATIONS)
    if share < 5:                               # the smallest dict table (8 slots) holds 5
        return share
    log2 = 3
    while ((2 << log2) * 2) // 3 <= share:       # what a table of 2^(log2+1) slots holds
        log2 += 1
    return ((1 << log2) * 2) // 3


class GenerationalMap(Generic[V]):
    """``str -> V`` bounded by *max_entries* (see the module docstring).

    :param max_entries: the most entries kept (at least 1).
    :param on_evict: called with ``{key: value}`` of the entries dropped by one insertion.
    """

    def __init__(self, max_entries: int, on_evict: Callable[[dict[str, V]], None] | None = None) -> None:
        self.max_entries = max(1, max_entries)
        self._generation = generation_size(self.max_entries)
        self._gens: list[dict[str, V]] = [{}]        # oldest first, newest last
        self.newest = self._gens[-1]                 # callers may read it directly (the hot path)
        self._len = 0
        self.on_evict = on_evict

    def __len__(self) -> int:
        return self._len

    def find(self, key: str) -> V | None:
        """The value for *key* without moving it, or ``None``."""
        for gen in reversed(self._gens):
            value = gen.get(key)
            if value is not None:
                return value
        return None

    def use(self, key: str) -> V | None:
        """The value for *key*, moved to the newest generation (a hit), or ``None``."""
        value = self.newest.get(key)
        if value is not None:
            return value
        for gen in self._gens[-2::-1]:
            value = gen.pop(key, None)
            if value is not None:
                self._len -= 1
                self._insert(key, value)
                return value
        return None

    def put(self, key: str, value: V) -> None:
        """Set *key* to *value* in the newest generation; evict past ``max_entries``."""
        newest = self.newest
        if key in newest:
            newest[key] = value
            return
        for gen in self._gens[:-1]:
            if gen.pop(key, None) is not None:
                self._len -= 1
                break
        self._insert(key, value)

    def replace(self, key: str, value: V) -> bool:
        """Set *key* to *value* where it is, without moving it; ``False`` if absent."""
        for gen in reversed(self._gens):
            if key in gen:
                gen[key] = value
                return True
        return False

    def pop(self, key: str) -> V | None:
        """Remove *key*; its value or ``None``."""
        for gen in self._gens:
            value = gen.pop(key, None)
            if value is not None:
                self._len -= 1
                return value
        return None

    def items(self) -> Iterator[tuple[str, V]]:
        """Every entry, oldest generation first."""
        for gen in list(self._gens):
            yield from list(gen.items())

    def _insert(self, key: str, value: V) -> None:
        if len(self.newest) >= self._generation:
            self._gens = [g for g in self._gens if g]
            self.newest = {}
            self._gens.append(self.newest)
        self.newest[key] = value
        self._len += 1
        if self._len > self.max_entries:
            dropped: dict[str, V] = {}
            while self._len > self.max_entries:
                oldest = self._gens[0]
                if not oldest:
                    self._gens.pop(0)
                    continue
                k, v = oldest.popitem()
                dropped[k] = v
                self._len -= 1
            if self.on_evict is not None:
                self.on_evict(dropped)
