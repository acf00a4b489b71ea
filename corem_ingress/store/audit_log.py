"""Reading the audit stream for one tenant, newest first, with filters (the console's audit
view, ``GET /api/v1/audit``).

The stream is shared by every tenant (``keys.audit_stream``); a page reads it backwards in
chunks and keeps the tenant's records, scanning at most ``MAX_SCAN`` entries per request so
that a tenant with few records among many cannot make a request unbounded. The cursor is
the stream id to continue before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import redis.exceptions

from corem_ingress.core.errors import InvalidArgument, Unavailable
from corem_ingress.store.keys import KeySchema

MAX_SCAN = 20_000
_CHUNK = 500
_ID_RE = re.compile(r"\d{1,20}-\d{1,20}")


@dataclass(frozen=True, slots=True)
class AuditFilter:
    #: The action starts with this (``keys.`` or ``keys.revoke``).
    action: str | None = None
    actor: str | None = None
    #: The target contains this (``device=dev_...``).
    target: str | None = None
    #: Only records with this outcome (``OK`` or an error code).
    outcome: str | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        if self.action is not None and not str(record.get("action", "")).startswith(self.action):
            return False
        if self.actor is not None and record.get("actor") != self.actor:
            return False
        if self.target is not None and self.target not in str(record.get("target", "")):
            return False
        return self.outcome is None or record.get("outcome") == self.outcome


_MAX_PART = 2**64 - 1


def check_stream_id(value: str, what: str) -> str:
    """A Redis stream id ``<ms>-<seq>``, each part within 64 bits."""
    if not _ID_RE.fullmatch(value) or any(int(p) > _MAX_PART for p in value.split("-")):
        raise InvalidArgument(f"{what} must be a stream id like 1700000000000-0")
    return value


def id_before(value: str) -> str | None:
    """The greatest stream id below ``value`` (None: there is none, ``0-0``)."""
    ms, seq = (int(p) for p in value.split("-"))
    if seq > 0:
        return f"{ms}-{seq - 1}"
    if ms > 0:
        return f"{ms - 1}-{_MAX_PART}"
    return None


class AuditLog:
    def __init__(self, redis: Any, keys: KeySchema) -> None:
        self._r = redis
        self._keys = keys

    async def page(
        self, tenant_id: str, flt: AuditFilter, *, limit: int, before: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` of the tenant's records matching ``flt``, newest first, and the
        cursor to continue from (None: the stream's start was reached)."""
        out: list[dict[str, Any]] = []
        upper = "+"
        if before is not None:
            below = id_before(check_stream_id(before, "before"))
            if below is None:
                return out, None
            upper = below
        scanned = 0
        try:
            while len(out) < limit and scanned < MAX_SCAN:
                chunk = await self._r.xrevrange(self._keys.audit_stream, upper, "-", count=_CHUNK)
                if not chunk:
                    return out, None
                for entry_id, fields in chunk:
                    scanned += 1
                    upper = f"({entry_id}"
                    if fields.get("tenant_id") != tenant_id or not flt.matches(fields):
                        continue
                    record: dict[str, Any] = {"id": entry_id, **fields}
                    try:
                        record["at"] = float(fields.get("at", "0"))
                    except ValueError:
                        record["at"] = 0.0
                    out.append(record)
                    if len(out) >= limit:
                        return out, entry_id
                if len(chunk) < _CHUNK:
                    return out, None
        except redis.exceptions.RedisError as exc:
            raise Unavailable("the audit log is unreachable", reason=str(exc)) from None
        return out, upper[1:]
