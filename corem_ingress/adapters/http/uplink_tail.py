"""The tenant's uplinks for operators: the latest ones (``GET /api/v1/uplinks``) and a live
tail as Server-Sent Events (``GET /api/v1/uplinks/stream``), both from the tenant's uplink
stream, optionally for one device.

The tail reads with ``XREAD BLOCK`` on its own Redis pool (``Stores.uplink_tail``); each
event's ``id`` is the stream entry id, so a client that reconnects with ``Last-Event-ID``
(or ``?last_event_id=``) gets what it missed, in order, from the stream (up to its trim).
A comment line every ``KEEPALIVE_S`` keeps proxies from closing an idle tail and finds a
client that went away. At most ``console.max_streams`` tails per node (503 past that);
every tail ends when the node stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

import redis.exceptions
import structlog
from aiohttp import web

from corem_ingress.adapters.http.bodies import page_params
from corem_ingress.adapters.http.sessions_api import device_param
from corem_ingress.core.errors import Unavailable
from corem_ingress.core.uplink import Uplink
from corem_ingress.store.audit_log import check_stream_id

if TYPE_CHECKING:
    from corem_ingress.adapters.http.admin import AdminApi

log = structlog.get_logger("corem.http.tail")

UPLINKS = "/api/v1/uplinks"
UPLINK_STREAM = "/api/v1/uplinks/stream"
KEEPALIVE_S = 15.0
#: ``XREAD BLOCK`` per round: below the pool's socket timeout, short enough to see a stop.
BLOCK_MS = 1000
#: Entries scanned (newest first) for ``GET /api/v1/uplinks`` with a device filter.
RECENT_SCAN = 2000
_NO_STORE = {"Cache-Control": "no-store"}


def _last_event_id(request: web.Request) -> str | None:
    value = request.query.get("last_event_id") or request.headers.get("Last-Event-ID")
    if value is None or value == "":
        return None
    return check_stream_id(value, "Last-Event-ID")


def sse_event(entry_id: str, uplink: Uplink) -> bytes:
    data = json.dumps(uplink.to_json(), separators=(",", ":"))
    return f"id: {entry_id}\nevent: uplink\ndata: {data}\n\n".encode()


class UplinkTailApi:
    def __init__(self, admin: AdminApi) -> None:
        self._admin = admin
        services = admin.services
        self._tail = services.stores.uplink_tail()
        self._max = services.config.console.max_streams
        self._open: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self.served = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(UPLINKS, self.recent)
        app.router.add_get(UPLINK_STREAM, self.stream)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, _app: web.Application) -> None:
        self._stopping.set()
        for task in list(self._open):
            task.cancel()

    async def recent(self, request: web.Request) -> web.Response:
        op = await self._admin.operator(request)
        device_id = device_param(request)
        limit, _cursor = page_params(request, default_limit=20)

        async def read() -> dict[str, object]:
            found = await self._tail.recent(op.tenant_id, device_id, limit=limit, scan=RECENT_SCAN)
            return {"uplinks": [{"id": i, **u.to_json()} for i, u in found]}

        target = f"device={device_id or '*'}"
        body = await self._admin.audited_read(op, "uplinks.recent", target, read())
        return web.json_response(body, headers=_NO_STORE)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        op = await self._admin.operator(request)
        device_id = device_param(request)
        start = _last_event_id(request)
        if len(self._open) >= self._max or self._stopping.is_set():
            raise Unavailable("too many live tails on this node", reason="console.max_streams")
        await self._admin.registry.audit(
            op.actor, op.tenant_id, "uplinks.tail", f"device={device_id or '*'}"
        )
        task = asyncio.current_task()
        assert task is not None
        self._open.add(task)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # nginx: pass events through as they come
            }
        )
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n: tail open\n\n")
            self.served += 1
            await self._pump(request, response, op.tenant_id, device_id, start)
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away, or the node stops
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("tail.redis_error", error=str(exc))
            with contextlib.suppress(Exception):
                await response.write(b'event: error\ndata: {"code":"UNAVAILABLE"}\n\n')
        finally:
            self._open.discard(task)
        return response

    async def _pump(
        self,
        request: web.Request,
        response: web.StreamResponse,
        tenant_id: str,
        device_id: str | None,
        start: str | None,
    ) -> None:
        last_write = time.monotonic()
        follow = self._tail.tail(
            tenant_id, device_id=device_id, start=start or "$", block_ms=BLOCK_MS
        )
        async for item in follow:
            transport = request.transport
            if self._stopping.is_set() or transport is None or transport.is_closing():
                return  # the node stops, or the client went away (its slot frees at once)
            if item is not None:
                entry_id, uplink = item
                await response.write(sse_event(entry_id, uplink))
                last_write = time.monotonic()
            elif time.monotonic() - last_write >= KEEPALIVE_S:
                await response.write(b": keepalive\n\n")
                last_write = time.monotonic()
