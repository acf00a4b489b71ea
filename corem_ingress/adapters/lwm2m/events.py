"""Publishing LwM2M events from sync code paths, in order: ``publish`` queues the event
(never blocks, never raises), one task appends them to the tenant's stream one by one, so a
follower sees a device's registered -> updated -> deregistered in the order they happened."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from corem_ingress.lwm2m.events import EventKind, Lwm2mEvent
from corem_ingress.store.lwm2m_events import Lwm2mEventLog

log = structlog.get_logger("corem.lwm2m")

#: Events waiting to be written; past this (Redis stalled) new ones are dropped and logged.
MAX_PENDING = 10_000


class EventPublisher:
    def __init__(self, log_: Lwm2mEventLog, *, clock: Callable[[], float]) -> None:
        self._log = log_
        self._clock = clock
        self._queue: asyncio.Queue[Lwm2mEvent] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def publish(
        self, kind: EventKind, tenant_id: str, device_id: str, data: Mapping[str, Any] | None = None
    ) -> None:
        if self._queue.qsize() >= MAX_PENDING:
            self.dropped += 1
            log.warning("lwm2m.event_dropped", kind=kind.value, device=device_id, error="backlog")
            return
        self._queue.put_nowait(Lwm2mEvent(kind, tenant_id, device_id, self._clock(), data or {}))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        while not self._queue.empty():
            await self._log.emit(self._queue.get_nowait())

    async def flush(self, timeout_s: float = 2.0) -> None:
        """Wait (bounded) until the queued events are written (shutdown, tests)."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)


__all__ = ["EventPublisher"]
