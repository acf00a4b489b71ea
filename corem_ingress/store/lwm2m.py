"""LwM2M in Redis: registrations (with expiry by TTL) and routing of operator requests.

Registrations
    ``{P}:lwm2m:reg:<id>`` holds the registration as JSON and
    ``{P}:lwm2m:dev:<device_id>`` the device's current registration id; both expire
    ``lifetime + grace`` seconds after the last Register/Update, so Redis removes a
    registration its device stopped refreshing even if no node is running. Reads
    hide a registration past its lifetime (it is only kept through the grace).

Routing
    A registration names the node holding the device's DTLS session. Any node (or
    the admin API) calls ``Lwm2mRouter.call(registration, request)``: the request is
    appended to that node's stream ``P:lwm2m:req:{<node>}`` with a fresh reply key
    ``P:lwm2m:reply:{<request id>}``; the holding node's ``Lwm2mRequestServer``
    reads its stream, sends the request over the session (its ``handler``) and
    pushes the device's answer (or an error) to the reply key; the caller waits
    for it with ``BLPOP`` until its timeout, then gives up (``Unavailable``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from corem_ingress.core.errors import (
    ALL_ERRORS,
    DeviceFailed,
    IngressError,
    InvalidArgument,
    Unavailable,
)
from corem_ingress.lwm2m.operations import (
    DeviceRequest,
    DeviceResponse,
    timeout_error,
)
from corem_ingress.lwm2m.registration import MethodNotAllowed, Outcome, Registration
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry.scripts import _Script

log = structlog.get_logger("corem.lwm2m")

Clock = Callable[[], float]
#: Longest single blocking call: below the Redis client's socket timeout (2 s in app.py).
BLOCK_SLICE_S = 1.0
REPLY_TTL_S = 60
REQUEST_STREAM_MAXLEN = 10_000

_DELETE = """
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


#: KEYS[1] the registration, ARGV[1] the session that ended. The stored JSON is ours
#: (json.dumps with compact separators): its only ``"reachable":true`` is the top-level key
#: (a quote inside a string value is always escaped), so it is flipped as text and the rest
#: of the record stays byte for byte (cjson would re-encode empty lists as objects).
_UNREACHABLE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local ok, reg = pcall(cjson.decode, raw)
if not ok or reg['session_id'] ~= ARGV[1] or reg['reachable'] == false then return 0 end
local new
local at = string.find(raw, '"reachable":true', 1, true)
if at then
  new = string.sub(raw, 1, at - 1) .. '"reachable":false' .. string.sub(raw, at + 16)
else
  new = string.sub(raw, 1, -2) .. ',"reachable":false}'
end
redis.call('SET', KEYS[1], new, 'KEEPTTL')
return 1
"""


class Lwm2mStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KeySchema,
        *,
        grace_s: int = 30,
        clock: Clock = time.time,
    ) -> None:
        self._r: Any = redis  # decode_responses=True: replies are str
        self._keys = keys
        self.grace_s = grace_s
        self._clock = clock
        self._delete = _Script(redis, source=_DELETE)
        self._unreachable = _Script(redis, source=_UNREACHABLE)

    def ttl_s(self, reg: Registration) -> int:
        return max(1, int(reg.expires_at - self._clock() + self.grace_s + 0.999))

    async def put(self, reg: Registration, *, replaced: Registration | None = None) -> None:
        """Write (or refresh) ``reg`` and point its device at it; drop what it replaced."""
        ttl = self.ttl_s(reg)
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                if replaced is not None and replaced.registration_id != reg.registration_id:
                    pipe.delete(self._keys.lwm2m_registration(replaced.registration_id))
                pipe.set(
                    self._keys.lwm2m_registration(reg.registration_id),
                    json.dumps(reg.to_json(), separators=(",", ":")),
                    ex=ttl,
                )
                pipe.set(self._keys.lwm2m_device(reg.device_id), reg.registration_id, ex=ttl)
                await pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise Unavailable("registration storage is unavailable", reason=str(exc)) from None

    async def apply(self, outcome: Outcome) -> None:
        """Persist a ``Registrar`` outcome (before replying to the device)."""
        if outcome.save is not None:
            await self.put(outcome.save, replaced=outcome.delete)
        elif outcome.delete is not None:
            await self.delete(outcome.delete)

    async def get(
        self, registration_id: str, *, include_expired: bool = False
    ) -> Registration | None:
        try:
            raw = await self._r.get(self._keys.lwm2m_registration(registration_id))
        except redis.exceptions.RedisError as exc:
            raise Unavailable("registration storage is unavailable", reason=str(exc)) from None
        if raw is None:
            return None
        try:
            reg = Registration.from_json(json.loads(raw))
        except (ValueError, InvalidArgument):
            log.error("lwm2m.bad_record", registration_id=registration_id)
            return None
        if not include_expired and reg.expired(self._clock()):
            return None
        return reg

    async def get_by_device(
        self, device_id: str, *, include_expired: bool = False
    ) -> Registration | None:
        """The device's registration (``GET /api/v1/devices/{device_id}/lwm2m``)."""
        try:
            reg_id = await self._r.get(self._keys.lwm2m_device(device_id))
        except redis.exceptions.RedisError as exc:
            raise Unavailable("registration storage is unavailable", reason=str(exc)) from None
        if reg_id is None:
            return None
        reg = await self.get(reg_id, include_expired=include_expired)
        return reg if reg is not None and reg.device_id == device_id else None

    async def delete(self, reg: Registration) -> None:
        """Remove ``reg``; the device index goes too unless it already names a newer one."""
        try:
            await self._delete(
                keys=[
                    self._keys.lwm2m_registration(reg.registration_id),
                    self._keys.lwm2m_device(reg.device_id),
                ],
                args=[reg.registration_id],
            )
        except redis.exceptions.RedisError as exc:
            raise Unavailable("registration storage is unavailable", reason=str(exc)) from None

    async def set_unreachable(self, registration_id: str, session_id: str) -> bool:
        """The session ``session_id`` ended: its registration (if still bound to it) shows
        ``reachable: false`` until an Update over a new session. One script, so a concurrent
        Update (which rebinds the registration) is never overwritten; the TTL is kept."""
        try:
            done = await self._unreachable(
                keys=[self._keys.lwm2m_registration(registration_id)], args=[session_id]
            )
        except redis.exceptions.RedisError as exc:
            raise Unavailable("registration storage is unavailable", reason=str(exc)) from None
        return bool(done)

    async def delete_device(
        self, device_id: str, *, credential_id: str | None = None
    ) -> Registration | None:
        """Revocation: remove the device's registration (only one made with ``credential_id``,
        when given: a registration made with the device's new credential stays)."""
        reg = await self.get_by_device(device_id, include_expired=True)
        if reg is None or (credential_id is not None and reg.credential_id != credential_id):
            return None
        await self.delete(reg)
        return reg


# -- routing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoutedRequest:
    request_id: str
    tenant_id: str
    device_id: str
    registration_id: str
    request: DeviceRequest
    #: Unix time after which the caller no longer waits: the holder drops it.
    deadline: float

    def encode(self) -> str:
        return json.dumps(
            {
                "request_id": self.request_id,
                "tenant_id": self.tenant_id,
                "device_id": self.device_id,
                "registration_id": self.registration_id,
                "request": self.request.to_json(),
                "deadline": self.deadline,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, data: str) -> RoutedRequest:
        try:
            raw = json.loads(data)
            return cls(
                str(raw["request_id"]),
                str(raw["tenant_id"]),
                str(raw["device_id"]),
                str(raw["registration_id"]),
                DeviceRequest.from_json(raw["request"]),
                float(raw["deadline"]),
            )
        except (KeyError, TypeError, ValueError, InvalidArgument) as exc:
            raise InvalidArgument("malformed routed request", reason=repr(exc)) from None


_ROUTABLE_ERRORS: tuple[type[IngressError], ...] = (*ALL_ERRORS, MethodNotAllowed)
_ERRORS_BY_CODE: dict[str, type[IngressError]] = {cls.code: cls for cls in _ROUTABLE_ERRORS}


def encode_reply(outcome: DeviceResponse | IngressError) -> str:
    if isinstance(outcome, IngressError):
        return json.dumps(outcome.to_json())
    return json.dumps({"response": outcome.to_json()}, separators=(",", ":"))


def decode_reply(data: str) -> DeviceResponse:
    """The device's response, or raises the error the holding node reported."""
    try:
        raw = json.loads(data)
        if "error" in raw:
            body = raw["error"]
            cls = _ERRORS_BY_CODE.get(str(body["code"]), Unavailable)
            message = str(body["message"])
            if cls is DeviceFailed:
                err: IngressError = DeviceFailed(
                    message, device_code=body.get("coap_code"), reason="routed"
                )
            else:
                err = cls(message, reason="routed")
        else:
            return DeviceResponse.from_json(raw["response"])
    except (KeyError, TypeError, ValueError, InvalidArgument) as exc:
        raise Unavailable("malformed reply from the session's node", reason=repr(exc)) from None
    raise err


class Lwm2mRouter:
    """The calling side: send a request to the node holding the device and wait."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KeySchema,
        *,
        clock: Clock = time.time,
    ) -> None:
        self._r: Any = redis
        self._keys = keys
        self._clock = clock

    async def call(
        self, reg: Registration, request: DeviceRequest, *, timeout_s: float = 10.0
    ) -> DeviceResponse:
        request_id = uuid.uuid4().hex
        reply_key = self._keys.lwm2m_reply(request_id)
        routed = RoutedRequest(
            request_id,
            reg.tenant_id,
            reg.device_id,
            reg.registration_id,
            request,
            self._clock() + timeout_s,
        )
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        try:
            await self._r.xadd(
                self._keys.lwm2m_requests(reg.node_id),
                {"request": routed.encode()},
                maxlen=REQUEST_STREAM_MAXLEN,
                approximate=True,
            )
            while (left := until - loop.time()) > 0:
                got = await self._r.blpop([reply_key], timeout=max(0.01, min(BLOCK_SLICE_S, left)))
                if got is not None:
                    return decode_reply(got[1])
            await self._r.delete(reply_key)
        except redis.exceptions.RedisError as exc:
            raise Unavailable("request routing is unavailable", reason=str(exc)) from None
        raise timeout_error()

    async def start_firmware(self, node_id: str, job_id: str) -> None:
        """Hand a firmware update job to the node holding the device's session (no reply:
        the job's progress is in its record and the event stream)."""
        try:
            await self._r.xadd(
                self._keys.lwm2m_requests(node_id),
                {"firmware": job_id},
                maxlen=REQUEST_STREAM_MAXLEN,
                approximate=True,
            )
        except redis.exceptions.RedisError as exc:
            raise Unavailable("request routing is unavailable", reason=str(exc)) from None


Handler = Callable[[RoutedRequest], Awaitable[DeviceResponse]]


class Lwm2mRequestServer:
    """The holding side: this node's request stream -> ``handler`` -> reply key.

    ``handler`` sends the request over the device's DTLS session and returns the
    device's response; it raises ``NotFound`` when this node no longer holds a
    session for the device, ``Unavailable`` on a CoAP timeout. Requests past their
    deadline are dropped unanswered (nobody waits for them).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KeySchema,
        node_id: str,
        handler: Handler,
        *,
        clock: Clock = time.time,
    ) -> None:
        self._r: Any = redis
        self._keys = keys
        self.node_id = node_id
        self._handler = handler
        self._clock = clock
        self._last = "$"
        self._tasks: set[asyncio.Task[None]] = set()
        self.handled = 0
        self.dropped = 0
        #: Firmware jobs handed to this node (``Lwm2mRouter.start_firmware``).
        self.on_firmware: Callable[[str], Coroutine[Any, Any, None]] | None = None

    async def start_position(self) -> None:
        """Serve requests sent from now on, even before the first ``poll`` (call at start)."""
        try:
            info = await self._r.xinfo_stream(self._stream)
            self._last = str(info["last-generated-id"])
        except redis.exceptions.ResponseError:  # no stream yet
            self._last = "0-0"

    @property
    def _stream(self) -> str:
        return self._keys.lwm2m_requests(self.node_id)

    async def poll(self, *, block_ms: int = 1000) -> int:
        """Read once (blocking up to ``block_ms``) and start handling what came; returns count."""
        result = await self._r.xread(
            {self._stream: self._last}, block=min(block_ms, int(BLOCK_SLICE_S * 1000)), count=100
        )
        n = 0
        for _name, entries in result or []:
            for entry_id, fields in entries:
                self._last = entry_id
                n += 1
                if "firmware" in fields and self.on_firmware is not None:
                    job: asyncio.Task[None] = asyncio.ensure_future(
                        self.on_firmware(str(fields["firmware"]))
                    )
                    self._tasks.add(job)
                    job.add_done_callback(self._tasks.discard)
                    continue
                try:
                    routed = RoutedRequest.decode(fields.get("request", ""))
                except InvalidArgument:
                    log.error("lwm2m.bad_routed_request", entry=entry_id)
                    continue
                if routed.deadline <= self._clock():
                    self.dropped += 1
                    continue
                task = asyncio.create_task(self._serve(routed))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return n

    async def _serve(self, routed: RoutedRequest) -> None:
        left = routed.deadline - self._clock()
        outcome: DeviceResponse | IngressError
        try:
            outcome = await asyncio.wait_for(self._handler(routed), timeout=max(0.01, left))
        except TimeoutError:
            return  # the caller has given up
        except IngressError as exc:
            outcome = exc
        except Exception:
            log.exception("lwm2m.handler_failed", device=routed.device_id)
            outcome = Unavailable("the session's node failed to send the request")
        key = self._keys.lwm2m_reply(routed.request_id)
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.rpush(key, encode_reply(outcome))
                pipe.expire(key, REPLY_TTL_S)
                await pipe.execute()
            self.handled += 1
        except redis.exceptions.RedisError as exc:
            log.error("lwm2m.reply_failed", device=routed.device_id, error=str(exc))

    async def run(self, stop: asyncio.Event, *, block_ms: int = 1000) -> None:
        """Serve until ``stop`` is set (within ``block_ms``); Redis hiccups are logged, retried.
        Serves requests sent since ``start_position`` if the caller already called it."""
        if self._last == "$":
            await self.start_position()
        while not stop.is_set():
            try:
                await self.poll(block_ms=block_ms)
            except redis.exceptions.RedisError as exc:
                log.warning("lwm2m.request_stream_error", error=str(exc))
                await asyncio.sleep(0.5)
        await self.drain()

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


__all__ = [
    "Lwm2mRequestServer",
    "Lwm2mRouter",
    "Lwm2mStore",
    "RoutedRequest",
    "decode_reply",
    "encode_reply",
]
