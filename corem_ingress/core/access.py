"""One access-limit policy for every transport: decisions in, ``Cause`` out.

The three limits of a node — the failed-authentication throttle per source address,
the per-tenant connection slots and the per-device message rate — are asked here the
same way by HTTP, MQTT and CoAP/DTLS; each adapter maps a ``Refusal`` to its protocol
(``Refusal.cause.reply``: 429 / CONNACK / 4.29 / a dropped ClientHello). Pure: no I/O,
the clock is an argument. ``corem_ingress/access_gate.py`` adds the metrics and logs.

The throttle is keyed by the client's address: behind a load balancer, the one its PROXY
header (or, for HTTP, ``X-Forwarded-For``) names. A trusted proxy's own address is never
throttled: when it stands for a connection (UDP through nginx, a PROXY ``LOCAL`` health
check), every client behind it would share the block (docs/operations.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from corem_ingress.core.causes import Cause
from corem_ingress.core.limits import DeviceRateLimiter, TenantConnections
from corem_ingress.core.throttle import AuthThrottle
from corem_ingress.core.trusted_proxies import TrustedProxies


@dataclass(frozen=True, slots=True)
class Refusal:
    cause: Cause
    #: When trying again may succeed (HTTP Retry-After, CoAP Max-Age); 0: not applicable.
    retry_after_s: int = 0


class AccessPolicy:
    def __init__(
        self,
        throttle: AuthThrottle | None = None,
        device_rate: DeviceRateLimiter | None = None,
        tenant_connections: TenantConnections | None = None,
        trusted_proxies: TrustedProxies | None = None,
    ) -> None:
        # ``is None``, not ``or``: each limiter has a __len__, so an empty one is falsy.
        self.throttle = AuthThrottle() if throttle is None else throttle
        self.device_rate = DeviceRateLimiter() if device_rate is None else device_rate
        self.tenant_connections = (
            TenantConnections() if tenant_connections is None else tenant_connections
        )
        self.trusted_proxies = TrustedProxies() if trusted_proxies is None else trusted_proxies

    # -- source addresses ----------------------------------------------------------------------
    def check_source(self, source: str, now: float) -> Refusal | None:
        """Before any credential work: a blocked source is refused until its block ends."""
        if source in self.trusted_proxies:
            return None
        until = self.throttle.blocked_until(source, now)
        if until is None:
            return None
        return Refusal(Cause.AUTH_THROTTLE, max(1, math.ceil(until - now)))

    def auth_failed(self, source: str, cause: Cause, now: float) -> bool:
        """A refused credential; True if this failure just blocked ``source``.

        Only causes that are the peer's doing count (not UNAVAILABLE, not a limit).
        """
        if not cause.counts_against_source or source in self.trusted_proxies:
            return False
        return self.throttle.failure(source, now)

    # -- sessions ------------------------------------------------------------------------------
    def open_session(self, tenant_id: str) -> Refusal | None:
        """Take one of the tenant's connection slots (give it back with ``close_session``)."""
        if self.tenant_connections.acquire(tenant_id):
            return None
        return Refusal(Cause.TENANT_CONNECTIONS)

    def close_session(self, tenant_id: str) -> None:
        self.tenant_connections.release(tenant_id)

    def tenant_full(self, tenant_id: str) -> bool:
        """The tenant holds all its slots on this node (a take-over may free one first)."""
        slots = self.tenant_connections
        return bool(slots.max_per_tenant) and slots.count(tenant_id) >= slots.max_per_tenant

    # -- messages ------------------------------------------------------------------------------
    def check_message(self, device_id: str, now: float) -> Refusal | None:
        """One uplink of ``device_id``: refused beyond its rate, with when to retry."""
        rate = self.device_rate
        if not rate.enabled or rate.allow(device_id, now):
            return None
        return Refusal(Cause.DEVICE_RATE, max(1, math.ceil(1 / rate.rate_per_s)))
