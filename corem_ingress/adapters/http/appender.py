"""Uplink appends for the HTTP adapter: concurrent requests share Redis round trips.

The write is the store's (XADD of ``Uplink.to_fields()`` to the tenant's stream), batched
by ``store.uplink_batcher.UplinkBatcher`` (one EVAL per stream per batch; on a Redis Cluster
it routes each stream's EVAL by slot). It cut the broker's CPU per HTTP uplink by about a
third (docs/benchmarks.md). A request gets 202 only once Redis has taken its entry; a failed
batch fails every request in it (503: the device retries; at least once, never lost).
Whatever happens to a batch, a request waits at most ``append_wait_s`` for it, then 503:
``redis.socket_timeout_s``, the bound of every Redis wait on a device's request path.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from corem_ingress import metrics
from corem_ingress.core.errors import Unavailable
from corem_ingress.core.uplink import Uplink
from corem_ingress.store.uplink_batcher import UplinkBatcher

TRANSPORT = "http"

Finished = Callable[[Unavailable | None], None]


class Appender:
    def __init__(self, batcher: UplinkBatcher, append_wait_s: float) -> None:
        self._batcher = batcher
        #: The longest a request waits for its batch (the batch itself is bounded by it too).
        self.append_wait_s = append_wait_s
        #: The waiting requests' (deadline, finish, future), in submission order, so in
        #: deadline order: one timer for all of them, armed for the oldest still waiting
        #: (a timer per request, created and cancelled, was ~0.5 us of each).
        self._waiting: deque[tuple[float, Finished, asyncio.Future[Unavailable | None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    async def append(self, uplink: Uplink) -> None:
        """Return once the entry is stored; raise Unavailable if it may not be."""
        error = await self.submit(uplink)
        if error is not None:
            raise error

    def submit(self, uplink: Uplink) -> asyncio.Future[Unavailable | None]:
        """A future answered once the entry is stored (None) or may not be (the error).

        The request's handler awaits it itself (``append`` is one more coroutine to build and
        resume per request); the metrics are counted when it is answered, unless the request
        went away first (cancelled: not counted, as before)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Unavailable | None] = loop.create_future()
        started = time.perf_counter()

        def finished(error: Unavailable | None) -> None:
            if not done.done():
                done.set_result(error)
                if error is None:
                    metrics.uplink_appended(TRANSPORT, time.perf_counter() - started)
                else:
                    metrics.uplink_failed(TRANSPORT)

        self._batcher.submit(uplink, finished)
        waiting = self._waiting
        while waiting and waiting[0][2].done():  # answered ones leave from the front
            waiting.popleft()
        deadline = loop.time() + self.append_wait_s
        waiting.append((deadline, finished, done))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire, loop)
        return done

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail every request past its deadline; re-arm for the next one still waiting."""
        self._timer = None
        now = loop.time()
        waiting = self._waiting
        while waiting:
            deadline, finished, done = waiting[0]
            if not done.done():
                if deadline > now:
                    self._timer = loop.call_at(deadline, self._expire, loop)
                    return
                finished(
                    Unavailable("uplink storage did not answer", reason="append wait exceeded")
                )
            waiting.popleft()

    async def drain(self, within: float) -> None:
        await self._batcher.drain(within)
