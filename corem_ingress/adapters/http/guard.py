"""Limits around authentication, shared by both HTTP APIs, with their metrics.

* Failed-authentication throttle per source address (``services.throttle``, shared by
  every listener of the node): a blocked address gets 429 before any credential work;
  each UNAUTHENTICATED counts a failure; a success forgets the address's failures.
* Per-device uplink rate (``services.device_rate``): 429 beyond it.

The address is the TCP peer: ``X-Forwarded-For`` is not trusted. Behind a reverse proxy
every device shares the proxy's address, so set ``limits.auth_fail_max: 0`` there (or
throttle at the proxy).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from aiohttp import web

from corem_ingress import metrics
from corem_ingress.adapters.http.errors import TooManyRequests
from corem_ingress.core.errors import Unauthenticated, Unavailable
from corem_ingress.services import Services

T = TypeVar("T")
TRANSPORT = "http"

log = structlog.get_logger("corem.http")


class AuthGuard:
    def __init__(self, services: Services) -> None:
        self._s = services

    @staticmethod
    def peer(request: web.Request) -> str:
        return request.remote or "unknown"

    async def authenticate(self, request: web.Request, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` (which raises Unauthenticated) unless the peer is throttled."""
        peer = self.peer(request)
        now = self._s.clock()
        until = self._s.throttle.blocked_until(peer, now)
        if until is not None:
            metrics.limit_refused(TRANSPORT, "auth_throttle")
            raise TooManyRequests(
                "too many failed authentications from this address: retry later",
                retry_after_s=math.ceil(until - now),
                reason="auth throttle",
            )
        try:
            result = await attempt()
        except Unauthenticated as exc:
            metrics.auth_failure(TRANSPORT, exc.reason)
            if self._s.throttle.failure(peer, now):
                log.warning("http.source_blocked", peer=peer, block_s=self._s.throttle.block_s)
            raise
        except Unavailable:
            metrics.auth_failure(TRANSPORT, "unavailable")
            raise
        self._s.throttle.success(peer)
        return result

    def uplink_allowed(self, device_id: str) -> None:
        rate = self._s.device_rate
        if not rate.allow(device_id, self._s.clock()):
            metrics.limit_refused(TRANSPORT, "device_rate")
            raise TooManyRequests(
                "this device's uplink rate limit is exceeded: retry later",
                retry_after_s=math.ceil(1 / rate.rate_per_s) if rate.rate_per_s > 0 else 1,
                reason="device rate",
            )
