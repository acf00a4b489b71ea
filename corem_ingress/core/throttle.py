"""Failed-authentication throttling per source IP: block after N failures within a window.

Pure: no I/O, the clock is an argument. Memory is bounded: at most ``max_sources``
addresses are tracked, least recently touched evicted first, and each keeps at most
``max_failures`` timestamps.

Adapters call, per connection attempt::

    if services.throttle.blocked(ip, now):   # refuse before any handshake work
        ...
    ...authenticate...
    services.throttle.failure(ip, now)       # on UNAUTHENTICATED (not on UNAVAILABLE)

A success forgets nothing: failures leave the count only by ageing out of the window.
Otherwise an attacker holding one valid credential of its own would interleave it with its
guesses (9 wrong + 1 right, repeated) and never be blocked.

``max_failures = 0`` disables throttling (``blocked`` is always False).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Source:
    #: Times of the recent failures (at most max_failures, oldest first).
    failures: deque[float] = field(default_factory=deque)
    #: Blocked until this time (0: not blocked).
    blocked_until: float = 0.0


class AuthThrottle:
    def __init__(
        self,
        *,
        max_failures: int = 10,
        window_s: float = 60.0,
        block_s: float = 300.0,
        max_sources: int = 100_000,
    ) -> None:
        if max_failures < 0 or window_s <= 0 or block_s < 0 or max_sources < 1:
            raise ValueError(
                "max_failures must be >= 0, window_s > 0, block_s >= 0, max_sources >= 1"
            )
        self.max_failures = max_failures
        self.window_s = window_s
        self.block_s = block_s
        self.max_sources = max_sources
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        #: Blocks started since creation (each N-th failure within the window).
        self.blocks = 0
        #: Blocks started here and not yet shared with the other nodes: (source, until).
        self._new_blocks: list[tuple[str, float]] = []

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0

    def __len__(self) -> int:
        return len(self._sources)

    def blocked(self, source: str, now: float) -> bool:
        """True while ``source`` is blocked: refuse it before doing any work."""
        state = self._sources.get(source)
        if state is None or state.blocked_until <= 0:
            return False
        if now < state.blocked_until:
            return True
        # The block ended: start over with a clean slate.
        state.blocked_until = 0.0
        state.failures.clear()
        return False

    def blocked_until(self, source: str, now: float) -> float | None:
        """When the block of ``source`` ends, or None if it is not blocked."""
        if not self.blocked(source, now):
            return None
        return self._sources[source].blocked_until

    def failure(self, source: str, now: float) -> bool:
        """Record a failed authentication; True if it (just now) blocked ``source``."""
        if not self.enabled:
            return False
        state = self._sources.get(source)
        if state is None:
            state = _Source()
            self._sources[source] = state
            self._evict()
        else:
            self._sources.move_to_end(source)
        if state.blocked_until > 0 and now < state.blocked_until:
            return False  # already blocked: the block is not extended by more attempts
        if state.blocked_until > 0:
            state.blocked_until = 0.0
            state.failures.clear()
        failures = state.failures
        while failures and now - failures[0] >= self.window_s:
            failures.popleft()
        failures.append(now)
        if len(failures) < self.max_failures:
            return False
        failures.clear()
        if self.block_s <= 0:
            return False
        state.blocked_until = now + self.block_s
        self.blocks += 1
        if len(self._new_blocks) < self.max_sources:
            self._new_blocks.append((source, state.blocked_until))
        return True

    def drain_new_blocks(self) -> list[tuple[str, float]]:
        """Blocks started on this node since the last call (to share through Redis)."""
        out, self._new_blocks = self._new_blocks, []
        return out

    def block_until(self, source: str, until: float) -> None:
        """Apply a block another node started (not counted as a block of this node)."""
        state = self._sources.get(source)
        if state is None:
            state = _Source()
            self._sources[source] = state
            self._evict()
        if until > state.blocked_until:
            state.blocked_until = until
            state.failures.clear()

    def _evict(self) -> None:
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)
