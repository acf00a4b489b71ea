"""The revocation bus: one Redis pub/sub subscription per node, kept alive.

Redis pub/sub drops messages while a subscriber is disconnected, so every
(re)subscription after the first triggers ``on_resync``: the node drops its
cache and re-validates its live sessions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from corem_ingress.core.events import CredentialEvent

log = structlog.get_logger("corem.bus")


class RevocationBus:
    def __init__(
        self,
        redis: aioredis.Redis,
        channel: str,
        *,
        on_event: Callable[[CredentialEvent], None],
        on_resync: Callable[[], Awaitable[None]],
        retry_delay: float = 0.2,
        max_retry_delay: float = 2.0,
    ) -> None:
        self._r = redis
        self.channel = channel
        self._on_event = on_event
        self._on_resync = on_resync
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self.subscribed = asyncio.Event()
        self.resyncs = 0
        self.events_received = 0

    async def run(self) -> None:
        first = True
        delay = self._retry_delay
        while True:
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                delay = self._retry_delay
                if first:
                    log.info("bus.subscribed", channel=self.channel)
                else:
                    self.resyncs += 1
                    log.warning("bus.resubscribed", channel=self.channel)
                    await self._on_resync()
                first = False
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        # Idle: make sure the connection is still alive (detects silent drops).
                        await pubsub.ping()
                        continue
                    if message.get("type") != "message":
                        continue
                    self._dispatch(message["data"])
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                if self.subscribed.is_set():
                    log.warning("bus.disconnected", error=str(exc))
                self.subscribed.clear()
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: S110 - closing a dead connection may fail again
                    pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_retry_delay)

    def _dispatch(self, data: bytes | str) -> None:
        try:
            event = CredentialEvent.decode(data)
        except ValueError as exc:
            log.error("bus.bad_message", error=str(exc))
            return
        self.events_received += 1
        try:
            self._on_event(event)
        except Exception:
            log.exception("bus.handler_failed", type=event.type.value, kind=event.kind.value)
