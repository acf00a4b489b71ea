"""Uplink streams: one Redis Stream per tenant. A device is acknowledged only after append."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from corem_ingress import metrics
from corem_ingress.core.errors import Unavailable
from corem_ingress.core.uplink import Uplink
from corem_ingress.store.keys import KeySchema


class UplinkStore:
    def __init__(
        self, redis: aioredis.Redis, keys: KeySchema, *, maxlen: int | None = None
    ) -> None:
        self._r: Any = redis  # decode_responses=True: replies are str
        self._keys = keys
        self._maxlen = maxlen

    async def append(self, uplink: Uplink) -> str:
        """Append; returns the stream entry id. Raises Unavailable if Redis did not take it."""
        started = time.perf_counter()
        try:
            entry_id = await self._r.xadd(
                self._keys.uplink_stream(uplink.tenant_id),
                uplink.to_fields(),
                maxlen=self._maxlen,
                approximate=True,
            )
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            metrics.uplink_failed(uplink.transport.value)
            raise Unavailable("uplink storage is unavailable", reason=str(exc)) from None
        metrics.uplink_appended(uplink.transport.value, time.perf_counter() - started)
        return str(entry_id)

    async def follow(
        self,
        tenant_id: str,
        *,
        device_id: str | None = None,
        start: str = "$",
        block_ms: int = 1000,
    ) -> AsyncIterator[tuple[str, Uplink]]:
        """Yield new entries (from ``start``: "$" for only new, "0" for all), forever."""
        stream = self._keys.uplink_stream(tenant_id)
        last = start
        if last == "$":
            # Pin "$" to the newest id now: a later XREAD with "$" would skip whatever
            # arrived between two calls.
            newest = await self._r.xrevrange(stream, count=1)
            last = newest[0][0] if newest else "0-0"
        while True:
            result = await self._r.xread({stream: last}, block=block_ms, count=100)
            for _name, entries in result or []:
                for entry_id, fields in entries:
                    last = entry_id
                    uplink = Uplink.from_fields(fields)
                    if device_id is None or uplink.device_id == device_id:
                        yield str(entry_id), uplink
