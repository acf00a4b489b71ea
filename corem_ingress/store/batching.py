"""Background writes gathered into batches: one Redis pipeline for the changes of a short
window instead of one round trip each (issue 18: redis-py's per-command cost per handshake).

Producers queue their changes synchronously, wherever they keep them, and call ``wake``;
they never wait on Redis. One task (``run``) waits for the first change, lets more gather
for ``delay_s``, then takes them all (``take``) and writes them in one go (``write``).
``lock`` serialises that write with the owner's other writes of the same data (a full
rewrite, a delete that must land after a save being written). A failed write is handed
to ``failed`` (log it, count it, plan a repair): the loop goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sized
from typing import Generic, TypeVar

import redis.exceptions

from corem_ingress.tasks import still_running

REDIS_ERRORS = (redis.exceptions.RedisError, OSError)
#: How long changes gather after the first one: far below what a reader notices, long
#: enough that a burst (handshakes, sessions opened and closed) shares a pipeline.
WRITE_DELAY_S = 0.02

B = TypeVar("B", bound=Sized)


class GatheredWrites(Generic[B]):
    def __init__(
        self,
        take: Callable[[], B],
        write: Callable[[B], Awaitable[None]],
        failed: Callable[[B, Exception], None],
        *,
        delay_s: float = WRITE_DELAY_S,
        errors: tuple[type[Exception], ...] = REDIS_ERRORS,
    ) -> None:
        self._take = take
        self._write = write
        self._failed = failed
        self.delay_s = delay_s
        #: The failures handed to ``failed``; any other ends the loop (raised from ``run``).
        self._errors = errors
        self.lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while still_running():
            await self._wake.wait()
            await asyncio.sleep(self.delay_s)  # let a burst of changes gather
            self._wake.clear()
            await self.write_now()

    async def write_now(self) -> None:
        """Write what is queued now (also: a clean stop's last batch)."""
        async with self.lock:
            batch = self._take()
            if not len(batch):
                return
            try:
                await self._write(batch)
            except self._errors as exc:
                self._failed(batch, exc)
