"""The revocation bus: one Redis pub/sub subscription per node, kept alive.

Redis pub/sub drops messages while a subscriber is disconnected, so every
(re)subscription after the first triggers ``on_resync(gap_started_at)``: the node stops
trusting its cache and re-validates its live sessions. The gap began when the
subscription was last known alive (its last message or idle poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from corem_ingress import metrics
from corem_ingress.core.events import CredentialEvent
from corem_ingress.store.connection import pubsub_factory

log = structlog.get_logger("corem.bus")


class RevocationBus:
    def __init__(
        self,
        redis: aioredis.Redis,
        channel: str,
        *,
        on_event: Callable[[CredentialEvent], None],
        on_resync: Callable[[float], Awaitable[None]],
        extra_channels: dict[str, Callable[[bytes | str], None]] | None = None,
        retry_delay: float = 0.2,
        max_retry_delay: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._r = redis
        #: A fresh pub/sub per (re)subscription (on a cluster: through one node, the next
        #: one after a failure).
        self._pubsub = pubsub_factory(redis)
        self.channel = channel
        #: Other channels on the same connection (the downlink fan-out), raw data to a handler.
        self._extra = dict(extra_channels or {})
        self._on_event = on_event
        self._on_resync = on_resync
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self.subscribed = asyncio.Event()
        self.resyncs = 0
        self.events_received = 0
        self._closing = False
        self.resync_task: asyncio.Future[None] | None = None
        self._clock = clock
        #: When the subscription was last known to be alive (a gap began after it).
        self.alive_at = clock()

    def close(self) -> None:
        """Stop reconnecting (redis-py may turn a cancellation into a connection error)."""
        self._closing = True

    async def run(self) -> None:
        first = True
        delay = self._retry_delay
        while not self._closing:
            # Subscribe confirmations are kept: redis-py's PubSub may reconnect and re-subscribe
            # by itself (its connection retry), and a second confirmation is how we see that gap.
            pubsub: Any = self._pubsub(ignore_subscribe_messages=False)
            try:
                await pubsub.subscribe(self.channel, *self._extra)
                self.subscribed.set()
                delay = self._retry_delay
                if first:
                    log.info("bus.subscribed", channel=self.channel)
                else:
                    self._resync("bus.resubscribed", self.alive_at)
                first = False
                confirmed = False
                # Idle connections are checked by the client's health_check_interval (PING).
                # No cancellation here: redis-py can hang when cancelled mid-command, so
                # close() sets a flag that this loop sees within a second.
                while not self._closing:
                    message = await pubsub.get_message(timeout=1.0)
                    # Each return (a message, or an idle second on a healthy connection)
                    # proves the subscription was alive until now.
                    gap_from = self.alive_at
                    self.alive_at = self._clock()
                    if message is None:
                        continue
                    channel = message.get("channel")
                    if message.get("type") == "subscribe" and channel == self.channel:
                        if confirmed:  # re-subscribed after a silent reconnect: a gap
                            self._resync("bus.reconnected", gap_from)
                        confirmed = True
                        continue
                    if message.get("type") != "message":
                        continue
                    if channel == self.channel:
                        self._dispatch(message["data"])
                    elif channel in self._extra:
                        self._extra[channel](message["data"])
            except (
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
                OSError,
            ) as exc:
                if self.subscribed.is_set():
                    log.warning("bus.disconnected", error=str(exc))
                    metrics.redis_error("bus")
                self.subscribed.clear()
            finally:
                # Closing a dead connection may fail again: nothing to do about it.
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_retry_delay)

    def _resync(self, why: str, gap_started_at: float) -> None:
        self.resyncs += 1
        metrics.bus_resync()
        log.warning(why, channel=self.channel, gap_s=round(self._clock() - gap_started_at, 3))
        # In its own task: events keep flowing while sessions are re-validated.
        self.resync_task = asyncio.ensure_future(self._on_resync(gap_started_at))

    def _dispatch(self, data: bytes | str) -> None:
        try:
            event = CredentialEvent.decode(data)
        except ValueError as exc:
            log.error("bus.bad_message", error=str(exc))
            return
        self.events_received += 1
        metrics.bus_event(event.type.value)
        try:
            self._on_event(event)
        except Exception:
            log.exception("bus.handler_failed", type=event.type.value, kind=event.kind.value)
