"""Limits around authentication, shared by both HTTP APIs (``core/access.py`` through
``access_gate.AccessGate``).

* Failed-authentication throttle per source address: a blocked address gets 429 with
  ``Retry-After`` before any credential work; each refused credential counts a failure
  when its cause is the peer's doing.
* Per-device uplink rate: 429 beyond it.

The address is ``request.remote``: the real client's (``client.py``: the TCP peer, or what a
trusted proxy's PROXY header or, with ``http.trust_forwarded_for``, its ``X-Forwarded-For``
named). A trusted proxy's own address is never throttled (``core/access.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from corem_ingress.access_gate import AccessGate
from corem_ingress.core.access import Refusal
from corem_ingress.core.errors import ResourceExhausted, Unauthenticated, Unavailable
from corem_ingress.services import Services

T = TypeVar("T")
C = TypeVar("C")
TRANSPORT = "http"

_MESSAGES = {
    "auth_throttle": "too many failed authentications from this address: retry later",
    "device_rate": "this device's uplink rate limit is exceeded: retry later",
}


def _too_many(refusal: Refusal) -> ResourceExhausted:
    return ResourceExhausted(
        _MESSAGES.get(refusal.cause.label, "rate limit exceeded: retry later"),
        retry_after_s=refusal.retry_after_s,
        reason=refusal.cause.label,
        cause=refusal.cause,
    )


class AuthGuard:
    def __init__(self, services: Services) -> None:
        self._gate = AccessGate(services.access, TRANSPORT, services.clock)

    @staticmethod
    def peer(request: web.Request) -> str:
        return request.remote or "unknown"

    async def authenticate(
        self,
        request: web.Request,
        resolve: Callable[[C], Awaitable[T]],
        credential: C,
        cached: Callable[[C], T | None] | None = None,
    ) -> T:
        """``resolve(credential)`` (which raises Unauthenticated) unless the peer is throttled;
        ``cached(credential)`` first if given (a cache hit: no coroutine to build and await).

        The function and its argument rather than a closure: no function object built per
        request on the device uplink's path."""
        peer = self.peer(request)
        refusal = self._gate.check_source(peer)
        if refusal is not None:
            raise _too_many(refusal)
        try:
            result = None if cached is None else cached(credential)
            if result is None:
                result = await resolve(credential)
        except (Unauthenticated, Unavailable) as exc:
            self._gate.auth_failed(peer, exc.cause)
            raise
        return result

    def uplink_allowed(self, device_id: str) -> None:
        refusal = self._gate.check_message(device_id)
        if refusal is not None:
            raise _too_many(refusal)
