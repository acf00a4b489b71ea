"""Downlinks: recorded in the tenant's downlink stream, queued for a device's persistent
session (``store/device_sessions.py``), fanned out to every node over pub/sub.

The node that owns the device's session delivers it and answers on a short-lived reply
key, so the sender can say what happened (``DownlinkOutcome``: delivered, queued with its
position, or dropped with a reason; docs/mqtt.md "Downlinks"). The same channel carries
take-over orders: a session resumed on another node ends the old connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from corem_ingress import metrics
from corem_ingress.core.downlink import (
    DeliveryState,
    Downlink,
    DownlinkOutcome,
    DropReason,
    decide_live,
)
from corem_ingress.core.errors import IngressError, Unavailable
from corem_ingress.core.json_text import JsonValue
from corem_ingress.store.device_sessions import DeviceSessions
from corem_ingress.store.keys import KeySchema

if TYPE_CHECKING:
    from corem_ingress.store.registry import Registry

log = structlog.get_logger("corem.downlink")

#: Delivers one downlink to one local session; returns a ``DeliveryState``/``DropReason``
#: value: "delivered", "not_subscribed" or "not_delivered". ``queued``: the downlink is in
#: the device's queue (the session sends it from there, removed on acknowledgement).
Sink = Callable[[Downlink, bool], Awaitable[str]]
#: Ends a local session taken over by another node (device id, owner "node|session").
TakeoverHandler = Callable[[str, str], None]
#: Longest single blocking call: below the Redis client's socket timeout.
BLOCK_SLICE_S = 0.5
REPLY_TTL_S = 30


class DownlinkPublisher:
    def __init__(self, redis: aioredis.Redis, keys: KeySchema) -> None:
        self._r = redis
        self._keys = keys

    async def record(self, downlink: Downlink) -> str:
        """Append to the tenant's downlink stream; returns the stream entry id."""
        try:
            entry_id = await self._r.xadd(
                self._keys.downlink_stream(downlink.tenant_id),
                {"downlink": downlink.encode()},
                maxlen=100_000,
                approximate=True,
            )
        except redis.exceptions.RedisError as exc:
            raise Unavailable("downlink storage is unavailable", reason=str(exc)) from None
        return str(entry_id)

    async def publish(self, downlink: Downlink) -> str:
        """Record and hand to whichever live session holds the device (no queue, no
        answer); returns the stream entry id. Operators' sends go through ``deliver``."""
        entry_id = await self.record(downlink)
        await self.fan_out(downlink, queued=False, reply=False)
        return entry_id

    async def fan_out(self, downlink: Downlink, *, queued: bool, reply: bool) -> None:
        """Tell every node; the owner of the device's session delivers (``queued``: from
        its queue) and, with ``reply``, answers on ``downlink_reply(message_id)``."""
        doc = json.loads(downlink.encode())
        doc["queued"] = queued
        if reply:
            doc["reply"] = self._keys.downlink_reply(downlink.message_id)
        try:
            await self._r.publish(self._keys.downlink_channel, json.dumps(doc))
        except redis.exceptions.RedisError as exc:
            raise Unavailable("downlink fan-out is unavailable", reason=str(exc)) from None

    async def takeover(self, device_id: str, previous_owner: str) -> None:
        """Ask the node holding ``previous_owner`` to end that session."""
        doc = {"takeover": device_id, "owner": previous_owner}
        try:
            await self._r.publish(self._keys.downlink_channel, json.dumps(doc))
        except redis.exceptions.RedisError as exc:
            log.warning("downlink.takeover_not_sent", device=device_id, error=str(exc))

    async def wait_reply(self, message_id: str, wait_s: float) -> str | None:
        """The delivering node's answer, or None if none came within ``wait_s``."""
        key = self._keys.downlink_reply(message_id)
        loop = asyncio.get_running_loop()
        until = loop.time() + wait_s
        r: Any = self._r
        try:
            while (left := until - loop.time()) > 0:
                got = await r.blpop([key], timeout=max(0.01, min(BLOCK_SLICE_S, left)))
                if got is not None:
                    value = got[1]
                    return value.decode() if isinstance(value, bytes) else str(value)
        except redis.exceptions.RedisError as exc:
            log.warning("downlink.reply_wait_failed", error=str(exc))
        return None


async def deliver(
    publisher: DownlinkPublisher,
    sessions: DeviceSessions,
    downlink: Downlink,
    *,
    queue_max: int,
    reply_wait_s: float,
    now: float,
) -> DownlinkOutcome:
    """Record, queue (persistent session) or hand over (live session), and say what
    happened. Counted in ``corem_downlinks_total{state,reason}``."""
    stream_id = await publisher.record(downlink)
    routed = await sessions.enqueue(downlink, queue_max=queue_max, now=now)

    def outcome(
        state: DeliveryState, reason: DropReason | None = None, position: int | None = None
    ) -> DownlinkOutcome:
        return DownlinkOutcome(
            state,
            downlink.message_id,
            downlink.device_id,
            stream_id,
            reason,
            position,
            routed.dropped,
        )

    for dropped_id in routed.dropped:
        metrics.downlink_dropped(DropReason.QUEUE_FULL.value)
        log.info(
            "downlink.dropped",
            device=downlink.device_id,
            message_id=dropped_id,
            reason=DropReason.QUEUE_FULL.value,
        )
    if routed.route == "none":
        result = outcome(DeliveryState.DROPPED, DropReason.NO_SESSION)
    elif routed.route == "unsubscribed":
        result = outcome(DeliveryState.DROPPED, DropReason.NOT_SUBSCRIBED)
    elif not routed.owner:  # offline
        if routed.route == "queued":
            result = outcome(DeliveryState.QUEUED, position=routed.position)
        elif downlink.qos == 0:
            result = outcome(DeliveryState.DROPPED, DropReason.QOS0_OFFLINE)
        else:
            result = outcome(DeliveryState.DROPPED, DropReason.NO_SESSION)
    else:
        queued = routed.route == "queued"
        await publisher.fan_out(downlink, queued=queued, reply=True)
        reply = await publisher.wait_reply(downlink.message_id, reply_wait_s)
        state, reason = decide_live(reply, queued=queued)
        result = outcome(state, reason, routed.position if state is DeliveryState.QUEUED else None)
    metrics.downlink_outcome(result.state.value, result.reason.value if result.reason else "")
    if result.state is DeliveryState.DROPPED:
        log.info(
            "downlink.dropped",
            device=downlink.device_id,
            message_id=downlink.message_id,
            reason=result.reason.value if result.reason else "",
        )
    return result


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
    expiry_s: int | None = None,
    queue_max: int = 100,
    reply_wait_s: float = 2.0,
) -> dict[str, JsonValue]:
    """One downlink from an operator (``corem-ingress downlink`` and the admin API alike):
    the device must be the tenant's (another tenant's is NotFound), then record, queue or
    hand over, and audit (``downlink.send``, with the error code when it fails)."""
    target = f"device={device_id}"
    try:
        device = await registry.get_device(tenant_id, device_id)
        downlink = Downlink.new(
            device.tenant_id, device.device_id, kind, payload, qos=qos, now=now, expiry_s=expiry_s
        )
        result = await deliver(
            DownlinkPublisher(registry.redis, registry.keys),
            DeviceSessions(registry.redis, registry.keys),
            downlink,
            queue_max=queue_max,
            reply_wait_s=reply_wait_s,
            now=now,
        )
    except IngressError as exc:
        await registry.audit(actor, tenant_id, "downlink.send", target, exc.code)
        raise
    await registry.audit(actor, tenant_id, "downlink.send", target)
    return result.to_json()


class DownlinkRouter:
    """This node's device_id -> local sinks (one per live session that wants downlinks)."""

    def __init__(self) -> None:
        self._sinks: dict[str, dict[str, Sink]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        #: Where the delivering node answers (set by the node: its Redis client).
        self.reply_redis: aioredis.Redis | None = None
        #: Called for a take-over order (each adapter that keeps device sessions).
        self.takeover_handlers: list[TakeoverHandler] = []

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
            doc = json.loads(data)
            if isinstance(doc, dict) and "takeover" in doc:
                for handler in self.takeover_handlers:
                    handler(str(doc["takeover"]), str(doc.get("owner", "")))
                return
            downlink = Downlink.decode(data)
        except ValueError as exc:
            log.error("downlink.bad_message", error=str(exc))
            return
        reply = doc.get("reply") if isinstance(doc.get("reply"), str) else None
        queued = doc.get("queued") is True
        sinks = list(self._sinks.get(downlink.device_id, {}).values())
        if not sinks:
            return  # not this node's device: the owner answers
        task = asyncio.ensure_future(self._deliver(sinks, downlink, queued, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, sinks: list[Sink], downlink: Downlink, queued: bool, reply: str | None
    ) -> None:
        results: list[str] = []
        for sink in sinks:
            try:
                results.append(await sink(downlink, queued))
            except Exception:
                log.exception("downlink.delivery_failed", device=downlink.device_id)
        if DeliveryState.DELIVERED in results:
            self.delivered += 1
            answer = DeliveryState.DELIVERED.value
        elif DropReason.NOT_SUBSCRIBED in results:
            answer = DropReason.NOT_SUBSCRIBED.value
        else:
            answer = DropReason.NOT_DELIVERED.value
        if reply is not None and self.reply_redis is not None:
            try:
                async with self.reply_redis.pipeline(transaction=False) as pipe:
                    pipe.rpush(reply, answer)
                    pipe.expire(reply, REPLY_TTL_S)
                    await pipe.execute()
            except redis.exceptions.RedisError as exc:
                log.warning("downlink.reply_failed", device=downlink.device_id, error=str(exc))
