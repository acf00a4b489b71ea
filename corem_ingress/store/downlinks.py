"""Downlinks: recorded in the tenant's downlink stream, fanned out to every node over pub/sub.

The node that holds the device's session (MQTT or CoAP Observe) delivers it;
a device with no live session anywhere gets nothing delivered (the stream keeps
the record). ``publish`` reports how many nodes delivered it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from corem_ingress.core.downlink import Downlink
from corem_ingress.core.errors import IngressError, Unavailable
from corem_ingress.core.json_text import JsonValue
from corem_ingress.store.keys import KeySchema

if TYPE_CHECKING:
    from corem_ingress.store.registry import Registry

log = structlog.get_logger("corem.downlink")

#: Delivers one downlink to one local session; returns True if it was handed to the device.
Sink = Callable[[Downlink], Awaitable[bool]]


class DownlinkPublisher:
    def __init__(self, redis: aioredis.Redis, keys: KeySchema) -> None:
        self._r = redis
        self._keys = keys

    async def publish(self, downlink: Downlink) -> str:
        """Record then fan out; returns the stream entry id."""
        try:
            entry_id = await self._r.xadd(
                self._keys.downlink_stream(downlink.tenant_id),
                {"downlink": downlink.encode()},
                maxlen=100_000,
                approximate=True,
            )
            await self._r.publish(self._keys.downlink_channel, downlink.encode())
        except redis.exceptions.RedisError as exc:
            raise Unavailable("downlink storage is unavailable", reason=str(exc)) from None
        return str(entry_id)


async def send_downlink(
    registry: Registry,
    tenant_id: str,
    device_id: str,
    kind: str,
    payload: JsonValue,
    *,
    qos: int,
    actor: str,
    now: float,
) -> dict[str, str]:
    """One downlink from an operator (``corem-ingress downlink`` and the admin API alike):
    the device must be the tenant's (another tenant's is NotFound), then record, fan out and
    audit (``downlink.send``, with the error code when it fails)."""
    target = f"device={device_id}"
    try:
        device = await registry.get_device(tenant_id, device_id)
        downlink = Downlink.new(device.tenant_id, device.device_id, kind, payload, qos=qos, now=now)
        entry = await DownlinkPublisher(registry.redis, registry.keys).publish(downlink)
    except IngressError as exc:
        await registry.audit(actor, tenant_id, "downlink.send", target, exc.code)
        raise
    await registry.audit(actor, tenant_id, "downlink.send", target)
    return {"message_id": downlink.message_id, "stream_id": entry, "device_id": device.device_id}


class DownlinkRouter:
    """This node's device_id -> local sinks (one per live session that wants downlinks)."""

    def __init__(self) -> None:
        self._sinks: dict[str, dict[str, Sink]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0

    def add(self, device_id: str, session_id: str, sink: Sink) -> None:
        self._sinks.setdefault(device_id, {})[session_id] = sink

    def remove(self, device_id: str, session_id: str) -> None:
        sinks = self._sinks.get(device_id)
        if sinks is not None:
            sinks.pop(session_id, None)
            if not sinks:
                del self._sinks[device_id]

    def has(self, device_id: str) -> bool:
        return device_id in self._sinks

    def on_message(self, data: str | bytes) -> None:
        try:
            downlink = Downlink.decode(data)
        except ValueError as exc:
            log.error("downlink.bad_message", error=str(exc))
            return
        sinks = list(self._sinks.get(downlink.device_id, {}).values())
        for sink in sinks:
            task = asyncio.ensure_future(self._deliver(sink, downlink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, sink: Sink, downlink: Downlink) -> None:
        try:
            if await sink(downlink):
                self.delivered += 1
        except Exception:
            log.exception("downlink.delivery_failed", device=downlink.device_id)
