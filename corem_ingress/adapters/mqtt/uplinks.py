"""Pipelined uplink appends: every connection's accepted publishes, one Redis round trip per batch.

The same write as ``UplinkStore.append`` (XADD of ``Uplink.to_fields()`` to the tenant's
stream), issued as a non-transactional pipeline so a busy listener pays one round trip
and one await for many messages. Each item's callback runs after its batch: with
``None`` once Redis has taken it (then, and only then, the PUBACK goes out), or with an
:class:`Unavailable` error. Items are appended in submission order, so a connection's
PUBACKs keep the order of its PUBLISHes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from corem_ingress.core.errors import Unavailable
from corem_ingress.core.uplink import Uplink
from corem_ingress.store.keys import KeySchema

log = structlog.get_logger("corem.mqtt")

Done = Callable[[Unavailable | None], None]


class UplinkBatcher:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KeySchema,
        *,
        max_batch: int = 512,
        on_batch_done: Callable[[], None] | None = None,
    ) -> None:
        self._r = redis
        self._keys = keys
        self._max_batch = max_batch
        self._queue: deque[tuple[Uplink, Done]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._on_batch_done = on_batch_done
        self.batches = 0

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, uplink: Uplink, done: Done) -> None:
        self._queue.append((uplink, done))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def drain(self, within: float) -> None:
        """Wait (bounded) until everything submitted has been written or has failed."""
        task = self._task
        if task is not None:
            await asyncio.wait([task], timeout=within)

    async def _run(self) -> None:
        try:
            while self._queue:
                n = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(n)]
                await self._write(batch)
                self.batches += 1
                if self._on_batch_done is not None:
                    self._on_batch_done()
        finally:
            self._task = None

    async def _write(self, batch: list[tuple[Uplink, Done]]) -> None:
        pipe = self._r.pipeline(transaction=False)
        for uplink, _done in batch:
            pipe.xadd(self._keys.uplink_stream(uplink.tenant_id), uplink.to_fields())  # type: ignore[arg-type]
        results: list[object]
        try:
            results = await pipe.execute(raise_on_error=False)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("mqtt.uplink_batch_failed", size=len(batch), error=str(exc))
            results = [exc] * len(batch)
        for (_uplink, done), result in zip(batch, results, strict=False):
            error = None
            if isinstance(result, Exception):
                error = Unavailable("uplink storage is unavailable", reason=str(result))
            try:
                done(error)
            except Exception:
                log.exception("mqtt.uplink_callback_failed")
