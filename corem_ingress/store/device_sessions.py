"""Device sessions and their offline downlink queues in Redis (docs/redis-keys.md).

One record per device (``sess:{device}``) says which node/session owns it (``owner``),
whether it outlives its connection (``persistent``: MQTT CleanSession 0 / Session Expiry,
a CoAP observer of ``/down``) and for how long, and an MQTT session's subscriptions. A
persistent session has a bounded queue of QoS 1 downlinks (``dlq:{device}``) that only
the owner delivers; entries leave it on PUBACK (CoAP: the notification's ACK). Every
step is one Lua script over the device's keys (one hash tag: one Cluster slot), so
enqueue, the take-over and delivery never interleave.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from corem_ingress.core.downlink import Downlink, downlink_topic
from corem_ingress.core.errors import Unavailable
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry.scripts import _Script


@dataclass(frozen=True, slots=True)
class OpenedSession:
    #: A stored persistent session was resumed (CONNACK session-present).
    present: bool
    #: The owner this session took over ("node|session"), or "".
    previous_owner: str
    #: The stored subscriptions (JSON text) of a resumed session, or "".
    subscriptions: str


@dataclass(frozen=True, slots=True)
class Enqueued:
    #: "none" (no session), "live" (deliver over pub/sub only), "unsubscribed" (a
    #: persistent MQTT session with no subscription matching the topic) or "queued".
    route: str
    #: The owner of the session ("node|session"), "" when the device is offline.
    owner: str = ""
    #: 1-based position in the queue (1: delivered next).
    position: int = 0
    #: Older downlinks dropped to make room (queue full).
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Fetched:
    #: (the entry as stored, the downlink, already sent once: redelivered with DUP=1)
    entries: list[tuple[str, Downlink, bool]]
    #: Message ids removed because their expiry passed.
    expired: list[str]


def owner_node(owner: str) -> str:
    """The node id of an owner value ("node|session")."""
    return owner.partition("|")[0]


def owner_session(owner: str) -> str:
    return owner.partition("|")[2]


class DeviceSessions:
    def __init__(self, redis: aioredis.Redis, keys: KeySchema) -> None:
        self._r = redis
        self._keys = keys
        self._open = _Script(redis, "session_open")
        self._close = _Script(redis, "session_close")
        self._subs = _Script(redis, "session_subs")
        self._enqueue = _Script(redis, "downlink_enqueue")
        self._fetch = _Script(redis, "downlink_fetch")
        self._ack = _Script(redis, "downlink_ack")
        self._will_claim = _Script(redis, "will_claim")

    def _device_keys(self, device_id: str) -> list[str]:
        k = self._keys
        return [
            k.device_session(device_id),
            k.downlink_queue(device_id),
            k.downlink_sent(device_id),
        ]

    async def _call(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys, [str(a) for a in args])
        except redis.exceptions.RedisError as exc:
            raise Unavailable("session storage is unavailable", reason=str(exc)) from None

    async def open(
        self,
        device_id: str,
        owner: str,
        *,
        clean: bool,
        persistent: bool,
        expiry_s: int,
        transport: str,
    ) -> OpenedSession:
        present, prev, subs = await self._call(
            self._open,
            [*self._device_keys(device_id), self._keys.device_will(device_id)],
            [owner, int(clean), int(persistent), expiry_s, transport],
        )
        return OpenedSession(bool(int(present)), _text(prev), _text(subs))

    async def close(self, device_id: str, owner: str) -> int:
        """0: taken over meanwhile (nothing changed), 1: kept until expiry, 2: discarded."""
        return int(await self._call(self._close, self._device_keys(device_id), [owner]))

    async def save_subscriptions(self, device_id: str, owner: str, subs: str) -> bool:
        keys = [self._keys.device_session(device_id)]
        return bool(int(await self._call(self._subs, keys, [owner, subs])))

    async def enqueue(self, downlink: Downlink, *, queue_max: int, now: float) -> Enqueued:
        out = await self._call(
            self._enqueue,
            self._device_keys(downlink.device_id),
            [
                downlink.encode(),
                downlink.qos,
                queue_max,
                now,
                downlink_topic(downlink.device_id, downlink.kind),
            ],
        )
        route = _text(out[0])
        if route == "none":
            return Enqueued("none")
        if route in ("live", "unsubscribed"):
            return Enqueued(route, _text(out[1]))
        return Enqueued("queued", _text(out[1]), int(out[2]), tuple(_text(x) for x in out[3:]))

    async def fetch(
        self,
        device_id: str,
        owner: str,
        *,
        now: float,
        count: int,
        in_flight: list[str],
        acked: list[tuple[str, str]] | None = None,
    ) -> Fetched | None:
        """Remove the ``acked`` (entry, message id) pairs, then the next ``count`` queued
        downlinks not in flight, in one round trip; None if another owner holds the
        session (this node must stop delivering)."""
        acks = acked or []
        flat = [x for pair in acks for x in pair]
        out = await self._call(
            self._fetch,
            self._device_keys(device_id),
            [owner, now, count, len(acks), *flat, *in_flight],
        )
        if out is None:
            return None
        raw_expired = json.loads(_text(out[0]) or "[]")
        expired = [str(x) for x in raw_expired] if isinstance(raw_expired, list) else []
        entries = []
        for i in range(1, len(out), 2):
            entry = _text(out[i])
            try:
                downlink = Downlink.decode(entry)
            except ValueError:
                await self.done(device_id, entry, "")
                continue
            entries.append((entry, downlink, bool(int(out[i + 1]))))
        return Fetched(entries, expired)

    async def done(self, device_id: str, entry: str, message_id: str) -> bool:
        """Remove one entry (acknowledged, or dropped by the delivering node)."""
        k = self._keys
        keys = [k.downlink_queue(device_id), k.downlink_sent(device_id)]
        return bool(int(await self._call(self._ack, keys, [entry, message_id])))

    async def pend_will(self, device_id: str, token: str, ttl_s: int) -> None:
        """A will waits for its delay: a reconnect (``open``) on any node cancels it."""
        try:
            await self._r.set(self._keys.device_will(device_id), token, ex=max(1, ttl_s))
        except redis.exceptions.RedisError as exc:
            raise Unavailable("session storage is unavailable", reason=str(exc)) from None

    async def claim_will(self, device_id: str, token: str) -> bool:
        """The delay is over: True if the will is still pending (store it now)."""
        keys = [self._keys.device_will(device_id)]
        return bool(int(await self._call(self._will_claim, keys, [token])))

    async def queue_length(self, device_id: str) -> int:
        try:
            return int(await self._r.llen(self._keys.downlink_queue(device_id)))
        except redis.exceptions.RedisError as exc:
            raise Unavailable("session storage is unavailable", reason=str(exc)) from None

    async def poll(
        self, device_id: str, owner: str, *, expiry_s: int, transport: str, now: float
    ) -> tuple[Downlink | None, int]:
        """A poll of a device with no live session here (CoAP ``GET /down``): its record
        opened and closed as ``owner`` (persistent: the queue is kept for ``expiry_s`` from
        now), then ``pop_oldest``; the three in one round trip (a pipeline, same order)."""
        keys = self._device_keys(device_id)
        will = self._keys.device_will(device_id)
        opened: list[str | int | float] = [owner, 0, 1, expiry_s, transport]
        try:
            pipe = self._r.pipeline(transaction=False)
            self._open.queue(pipe, [*keys, will], opened)
            self._close.queue(pipe, keys, [owner])
            pipe.lpop(self._keys.downlink_queue(device_id))
            # Not raise_on_error: the LPOP ran whatever the scripts did; its entry is ours.
            replies = await pipe.execute(raise_on_error=False)
        except redis.exceptions.RedisError as exc:
            raise Unavailable("session storage is unavailable", reason=str(exc)) from None
        opened_reply, closed_reply, first = replies
        if isinstance(first, Exception):
            raise Unavailable("session storage is unavailable", reason=str(first))
        if isinstance(opened_reply, redis.exceptions.NoScriptError):
            # The server's script cache was flushed: the record as before, with EVAL.
            await self._call(self._open, [*keys, will], list(opened))
            await self._call(self._close, keys, [owner])
        elif isinstance(opened_reply, Exception) or isinstance(closed_reply, Exception):
            failed = opened_reply if isinstance(opened_reply, Exception) else closed_reply
            if first is not None:  # refused like before (5.03): the entry goes back first
                await self._r.lpush(self._keys.downlink_queue(device_id), first)
            raise Unavailable("session storage is unavailable", reason=str(failed))
        if first is None:
            return None, 0
        downlink = _unexpired(first, now)
        if downlink is not None:
            return downlink, 0
        rest, expired = await self.pop_oldest(device_id, now=now)
        return rest, expired + (0 if _undecodable(first) else 1)

    async def pop_oldest(self, device_id: str, *, now: float) -> tuple[Downlink | None, int]:
        """Take the oldest unexpired queued downlink off the queue (CoAP ``GET /down``);
        returns it (or None) and how many expired ones were removed on the way."""
        expired = 0
        key = self._keys.downlink_queue(device_id)
        while True:
            try:
                entry: Any = await self._r.lpop(key)
            except redis.exceptions.RedisError as exc:
                raise Unavailable("session storage is unavailable", reason=str(exc)) from None
            if entry is None:
                return None, expired
            try:
                downlink = Downlink.decode(entry)
            except ValueError:
                continue
            if not downlink.expired(now):
                return downlink, expired
            expired += 1


def _unexpired(entry: Any, now: float) -> Downlink | None:
    """The downlink of a popped queue entry, or None when it expired or does not decode."""
    try:
        downlink = Downlink.decode(entry)
    except ValueError:
        return None
    return None if downlink.expired(now) else downlink


def _undecodable(entry: Any) -> bool:
    try:
        Downlink.decode(entry)
    except ValueError:
        return True
    return False


def _text(value: Any) -> str:
    if value is None or value is False:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
