"""The per-tenant LwM2M event stream ``P:lwm2m:events:{<tenant>}`` (``lwm2m/events.py``).

Appending is best effort: an event that Redis did not take is logged and dropped, never an
error for the device or operator request that caused it (the registration or result it
reports is stored on its own). Followers resume from any entry id (SSE Last-Event-ID).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from corem_ingress.core.errors import InvalidArgument, Unavailable
from corem_ingress.lwm2m.events import Lwm2mEvent
from corem_ingress.store.keys import KeySchema

log = structlog.get_logger("corem.lwm2m")

#: Entries kept per tenant (approximate trim): how far back a follower can resume.
EVENTS_MAXLEN = 10_000


class Lwm2mEventLog:
    def __init__(
        self, redis: aioredis.Redis, keys: KeySchema, *, maxlen: int = EVENTS_MAXLEN
    ) -> None:
        self._r: Any = redis  # decode_responses=True
        self._keys = keys
        self._maxlen = maxlen

    async def emit(self, event: Lwm2mEvent) -> str | None:
        """Append; the entry id, or None if Redis did not take it (logged)."""
        try:
            entry = await self._r.xadd(
                self._keys.lwm2m_events(event.tenant_id),
                event.to_fields(),
                maxlen=self._maxlen,
                approximate=True,
            )
        except redis.exceptions.RedisError as exc:
            log.warning(
                "lwm2m.event_dropped", kind=event.kind.value, device=event.device_id, error=str(exc)
            )
            return None
        return str(entry)

    async def newest_id(self, tenant_id: str) -> str:
        """The id of the newest event now ("0-0" if none): follow from here for new ones only."""
        try:
            newest = await self._r.xrevrange(self._keys.lwm2m_events(tenant_id), count=1)
        except redis.exceptions.RedisError as exc:
            raise Unavailable("event storage is unavailable", reason=str(exc)) from None
        return str(newest[0][0]) if newest else "0-0"

    async def read(
        self,
        tenant_id: str,
        after: str,
        *,
        device_id: str | None = None,
        block_ms: int = 1000,
        count: int = 100,
    ) -> tuple[str, list[tuple[str, Lwm2mEvent]]]:
        """Events after ``after`` (waiting up to ``block_ms`` for one); returns the position to
        read from next (it moves past filtered-out entries too) and the matching events."""
        try:
            result = await self._r.xread(
                {self._keys.lwm2m_events(tenant_id): after}, block=block_ms, count=count
            )
        except redis.exceptions.RedisError as exc:
            raise Unavailable("event storage is unavailable", reason=str(exc)) from None
        out: list[tuple[str, Lwm2mEvent]] = []
        for _name, entries in result or []:
            for entry_id, fields in entries:
                after = str(entry_id)
                try:
                    event = Lwm2mEvent.from_fields(fields)
                except InvalidArgument:
                    log.error("lwm2m.bad_event", entry=entry_id)
                    continue
                if device_id is None or event.device_id == device_id:
                    out.append((after, event))
        return after, out


__all__ = ["EVENTS_MAXLEN", "Lwm2mEventLog"]
