"""Deadlines of many peers in one binary heap: O(log n) to set, O(1) to peek, no scan.

Each key (a peer) has at most one live deadline per kind; setting it again or cancelling
the key leaves the old heap entry behind as stale, skipped when it surfaces. Stale entries
are counted and the heap is rebuilt once they outnumber the live ones, so a server that
handshakes and forgets peers all day keeps a heap the size of what is alive. Entries hold
the key only (an int), never the peer: a forgotten peer is freed at once. Pure, no clock.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar

K = TypeVar("K")

#: Below this many stale entries the heap is never rebuilt.
_MIN_COMPACT = 64


class TimerHeap(Generic[K]):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K, str]] = []
        #: (key, kind) -> the sequence number of its live entry.
        self._live: dict[tuple[K, str], int] = {}
        self._seq = itertools.count()
        self._stale = 0
        #: Counts the changes of the live deadlines: while it stands still, the next
        #: deadline has not moved (the transport then skips re-planning its timer).
        self.changes = 0

    def __len__(self) -> int:
        """Live deadlines."""
        return len(self._live)

    def set(self, key: K, kind: str, deadline: float) -> None:
        """``key``'s ``kind`` deadline is now ``deadline`` (replacing an earlier one)."""
        seq = next(self._seq)
        self.changes += 1
        if self._live.get((key, kind)) is not None:
            self._stale += 1
        self._live[(key, kind)] = seq
        heapq.heappush(self._heap, (deadline, seq, key, kind))
        self._maybe_compact()

    def cancel(self, key: K, kind: str) -> None:
        if self._live.pop((key, kind), None) is not None:
            self.changes += 1
            self._stale += 1
            self._maybe_compact()

    def cancel_all(self, key: K, kinds: tuple[str, ...]) -> None:
        for kind in kinds:
            self.cancel(key, kind)

    def next_deadline(self) -> float | None:
        self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[tuple[K, str]]:
        """Every live (key, kind) whose deadline is ``<= now``, earliest first; each is
        removed (set it again to keep it)."""
        due: list[tuple[K, str]] = []
        while True:
            self._drop_stale_top()
            if not self._heap or self._heap[0][0] > now:
                return due
            _deadline, _seq, key, kind = heapq.heappop(self._heap)
            del self._live[(key, kind)]
            self.changes += 1
            due.append((key, kind))

    def _current(self, entry: tuple[float, int, K, str]) -> bool:
        return self._live.get((entry[2], entry[3])) == entry[1]

    def _drop_stale_top(self) -> None:
        heap = self._heap
        while heap and not self._current(heap[0]):
            heapq.heappop(heap)
            self._stale -= 1

    def _maybe_compact(self) -> None:
        if self._stale > _MIN_COMPACT and self._stale > len(self._live):
            self._heap = [e for e in self._heap if self._current(e)]
            heapq.heapify(self._heap)
            self._stale = 0
