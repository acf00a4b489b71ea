"""Uplink streams: one Redis Stream per tenant. A device is acknowledged only after append.

``append`` is on the request path: it goes through the node's request-path client
(``keyed``: on a cluster, the per-node slot router) and waits at most ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from corem_ingress import metrics
from corem_ingress.core.errors import Unavailable
from corem_ingress.core.uplink import Uplink
from corem_ingress.store.connection import ClientCommands, KeyedCommands
from corem_ingress.store.keys import KeySchema


class UplinkStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KeySchema,
        *,
        maxlen: int | None = None,
        keyed: KeyedCommands | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self._r: Any = redis  # decode_responses=True: replies are str
        self._keys = keys
        self._maxlen = maxlen
        self._keyed: KeyedCommands = keyed or ClientCommands(redis)
        self._timeout_s = timeout_s

    async def append(self, uplink: Uplink) -> str:
        """Append; returns the stream entry id. Raises Unavailable if Redis did not take it."""
        started = time.perf_counter()
        stream = self._keys.uplink_stream(uplink.tenant_id)
        trim = ["MAXLEN", "~", str(self._maxlen)] if self._maxlen is not None else []
        fields = [part for item in uplink.to_fields().items() for part in item]
        try:
            async with asyncio.timeout(self._timeout_s):
                entry_id = await self._keyed.execute(stream, "XADD", stream, *trim, "*", *fields)
        except TimeoutError:
            metrics.uplink_failed(uplink.transport.value)
            raise Unavailable(
                "uplink storage is unavailable", reason=f"no answer within {self._timeout_s}s"
            ) from None
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            metrics.uplink_failed(uplink.transport.value)
            raise Unavailable("uplink storage is unavailable", reason=str(exc)) from None
        metrics.uplink_appended(uplink.transport.value, time.perf_counter() - started)
        return str(entry_id)

    async def recent(
        self, tenant_id: str, device_id: str | None, *, limit: int, scan: int
    ) -> list[tuple[str, Uplink]]:
        """The newest ``limit`` entries (of ``device_id`` if given), newest first, looking at
        most ``scan`` entries back."""
        stream = self._keys.uplink_stream(tenant_id)
        out: list[tuple[str, Uplink]] = []
        upper = "+"
        seen = 0
        try:
            while seen < scan and len(out) < limit:
                count = min(500, scan - seen) if device_id is not None else limit - len(out)
                chunk = await self._r.xrevrange(stream, upper, "-", count=count)
                for entry_id, fields in chunk:
                    seen += 1
                    upper = f"({entry_id}"
                    uplink = Uplink.from_fields(fields)
                    if device_id is None or uplink.device_id == device_id:
                        out.append((str(entry_id), uplink))
                        if len(out) >= limit:
                            break
                if len(chunk) < count:
                    break
        except redis.exceptions.RedisError as exc:
            raise Unavailable("uplink storage is unavailable", reason=str(exc)) from None
        return out

    async def tail(
        self,
        tenant_id: str,
        *,
        device_id: str | None = None,
        start: str = "$",
        block_ms: int = 1000,
    ) -> AsyncIterator[tuple[str, Uplink] | None]:
        """Like ``follow``, and None after each read that brought nothing (a live tail
        writes its keep-alives then)."""
        stream = self._keys.uplink_stream(tenant_id)
        last = start
        if last == "$":
            # Pin "$" to the newest id now: a later XREAD with "$" would skip whatever
            # arrived between two calls.
            newest = await self._r.xrevrange(stream, count=1)
            last = newest[0][0] if newest else "0-0"
        while True:
            result = await self._r.xread({stream: last}, block=block_ms, count=100)
            if not result:
                yield None
                continue
            for _name, entries in result:
                for entry_id, fields in entries:
                    last = entry_id
                    uplink = Uplink.from_fields(fields)
                    if device_id is None or uplink.device_id == device_id:
                        yield str(entry_id), uplink

    async def follow(
        self,
        tenant_id: str,
        *,
        device_id: str | None = None,
        start: str = "$",
        block_ms: int = 1000,
    ) -> AsyncIterator[tuple[str, Uplink]]:
        """Yield new entries (from ``start``: "$" for only new, "0" for all), forever."""
        async for item in self.tail(tenant_id, device_id=device_id, start=start, block_ms=block_ms):
            if item is not None:
                yield item
