"""Queue mode in Redis: the requests waiting for a sleeping LwM2M device, and their results.

Keys (all under the registry hash tag ``{P}``, so each script is one Cluster slot):

* ``{P}:lwm2m:awake:<device>`` — present while the queue-mode device is awake (PX = the
  awake window), set by the node holding its session on every request it sends;
* ``{P}:lwm2m:queue:<device>`` — list of request ids waiting, oldest first;
* ``{P}:lwm2m:queued:<request_id>`` — the request and, once finished, its result (JSON),
  kept until its deadline + an hour;
* ``{P}:lwm2m:queue-deadlines`` — zset request id -> deadline: the expiry sweep, and the
  claim: whoever removes a request id from it (the draining node, or a sweeping node) is
  the only one to act on it.

No request is lost between "asleep" and "awake": ``enqueue`` checks the awake key and
pushes in one script, and the holding node sets the awake key before it drains. A request
enqueued just before that is drained; one made just after is sent directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import InvalidArgument, ResourceExhausted, Unavailable
from corem_ingress.lwm2m.queue import QueuedRequest
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry.scripts import _Script

log = structlog.get_logger("corem.lwm2m")

#: KEYS: awake, queue, record, deadlines. ARGV: request id, record JSON, max, record TTL (s),
#: deadline, queue TTL (s), 1 to queue even if awake (the session ended). -> -1 awake (send
#: now), -2 full, else the queue length.
_ENQUEUE = """
if ARGV[7] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[3]) then return -2 end
redis.call('SET', KEYS[3], ARGV[2], 'EX', tonumber(ARGV[4]))
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
local n = redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[6]))
return n
"""

#: KEYS: awake. ARGV: window (ms). -> 1 if the device was asleep (a wake-up), else 0.
_WAKE = """
local was = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', tonumber(ARGV[1]))
return 1 - was
"""


class Lwm2mQueue:
    def __init__(
        self, redis: aioredis.Redis, keys: KeySchema, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._r: Any = redis  # decode_responses=True
        self._keys = keys
        self._clock = clock
        self._enqueue = _Script(redis, source=_ENQUEUE)
        self._wake = _Script(redis, source=_WAKE)

    async def enqueue(
        self,
        item: QueuedRequest,
        *,
        max_per_device: int,
        max_deadline_s: float,
        even_if_awake: bool = False,
    ) -> int | None:
        """Queue ``item`` unless the device is awake (None: send it now); the number of
        requests now waiting. ResourceExhausted when the device has ``max_per_device``.
        ``even_if_awake``: the device's session ended, it can only be reached when back."""
        now = self._clock()
        try:
            got = await self._enqueue(
                keys=[
                    self._keys.lwm2m_awake(item.device_id),
                    self._keys.lwm2m_queue(item.device_id),
                    self._keys.lwm2m_queued(item.request_id),
                    self._keys.lwm2m_queue_deadlines,
                ],
                args=[
                    item.request_id,
                    json.dumps(item.to_json(), separators=(",", ":")),
                    max_per_device,
                    item.ttl_s(now),
                    repr(item.deadline),
                    int(max_deadline_s) + 60,
                    "1" if even_if_awake else "0",
                ],
            )
        except redis.exceptions.RedisError as exc:
            raise Unavailable("the request queue is unavailable", reason=str(exc)) from None
        if got == -1:
            return None
        if got == -2:
            raise ResourceExhausted(
                f"the device already has {max_per_device} requests waiting for it to wake up",
                retry_after_s=60,
                cause=Cause.LWM2M_QUEUE_FULL,
            )
        return int(got)

    async def wake(self, device_id: str, awake_s: float) -> bool:
        """The device sent a request: it is awake for ``awake_s``; True if it was asleep."""
        try:
            woke = await self._wake(
                keys=[self._keys.lwm2m_awake(device_id)], args=[max(1, int(awake_s * 1000))]
            )
        except redis.exceptions.RedisError as exc:
            raise Unavailable("the request queue is unavailable", reason=str(exc)) from None
        return bool(woke)

    async def sleep(self, device_id: str) -> None:
        """The device's session ended: requests wait for it again."""
        try:
            await self._r.delete(self._keys.lwm2m_awake(device_id))
        except redis.exceptions.RedisError as exc:
            log.warning("lwm2m.queue_sleep_failed", device=device_id, error=str(exc))

    async def waiting(self, device_id: str) -> int:
        try:
            return int(await self._r.llen(self._keys.lwm2m_queue(device_id)))
        except redis.exceptions.RedisError as exc:
            raise Unavailable("the request queue is unavailable", reason=str(exc)) from None

    async def get(self, request_id: str) -> QueuedRequest | None:
        try:
            raw = await self._r.get(self._keys.lwm2m_queued(request_id))
        except redis.exceptions.RedisError as exc:
            raise Unavailable("the request queue is unavailable", reason=str(exc)) from None
        if raw is None:
            return None
        try:
            return QueuedRequest.from_json(json.loads(raw))
        except (ValueError, InvalidArgument):
            log.error("lwm2m.bad_queued_request", request_id=request_id)
            return None

    async def claim(self, request_id: str) -> bool:
        """Take the request for this caller only (drain or sweep): True once, ever."""
        try:
            return bool(await self._r.zrem(self._keys.lwm2m_queue_deadlines, request_id))
        except redis.exceptions.RedisError as exc:
            raise Unavailable("the request queue is unavailable", reason=str(exc)) from None

    async def pop(self, device_id: str) -> QueuedRequest | None:
        """The oldest request waiting for the device, claimed (None when none is left).
        Ids whose record is gone or already claimed (swept) are skipped."""
        while True:
            try:
                request_id = await self._r.lpop(self._keys.lwm2m_queue(device_id))
            except redis.exceptions.RedisError as exc:
                raise Unavailable("the request queue is unavailable", reason=str(exc)) from None
            if request_id is None:
                return None
            if not await self.claim(request_id):
                continue
            item = await self.get(request_id)
            if item is not None:
                return item

    async def save(self, item: QueuedRequest) -> None:
        """Write the request's new state (sent, done, failed, expired)."""
        try:
            await self._r.set(
                self._keys.lwm2m_queued(item.request_id),
                json.dumps(item.to_json(), separators=(",", ":")),
                ex=item.ttl_s(self._clock()),
            )
        except redis.exceptions.RedisError as exc:
            log.warning("lwm2m.queue_save_failed", request_id=item.request_id, error=str(exc))

    async def past_deadline(self, now: float, *, limit: int = 100) -> list[QueuedRequest]:
        """Requests whose deadline passed unsent, claimed by this caller (the sweep): each
        is removed from its device's queue; the caller records them as expired."""
        try:
            ids = await self._r.zrangebyscore(
                self._keys.lwm2m_queue_deadlines, "-inf", now, start=0, num=limit
            )
        except redis.exceptions.RedisError as exc:
            raise Unavailable("the request queue is unavailable", reason=str(exc)) from None
        out = []
        for request_id in ids:
            if not await self.claim(request_id):
                continue
            item = await self.get(request_id)
            if item is None:
                continue
            try:
                await self._r.lrem(self._keys.lwm2m_queue(item.device_id), 0, request_id)
            except redis.exceptions.RedisError as exc:
                log.warning("lwm2m.queue_lrem_failed", request_id=request_id, error=str(exc))
            out.append(item)
        return out


__all__ = ["Lwm2mQueue"]
