"""Metrics and limits of the CoAP/DTLS listener (issue 8), kept out of the protocol code.

The DTLS transport calls it on its events; the device site's uplink append is wrapped:

* failed-authentication throttle per source IP (``services.throttle``, shared with the
  other listeners of the node): a blocked source's ClientHellos are dropped silently,
  before the cookie exchange and any handshake work (an alert would make us a reflector
  for spoofed sources). Only handshakes that passed the cookie exchange (the source
  address is verified) and then failed on the credential count as failures; a credential
  the resolver's cache cannot vouch for because Redis is down does not;
* per-tenant session limit (``services.tenant_connections``): a session over the limit
  is closed with close_notify right after its handshake (counted, not an auth failure);
* per-device message rate (``services.device_rate``): 4.29 Too Many Requests with
  Max-Age (seconds until the next token), nothing stored.

Metrics: peers that passed the cookie exchange (``corem_connections_total``), handshakes
by outcome, sessions opened by tenant, auth failures by reason, limit refusals. Uplink
appends are counted by ``UplinkStore.append`` (transport ``coap``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from corem_ingress import metrics
from corem_ingress.adapters.dtls.events import Address, Credential
from corem_ingress.core.errors import ResourceExhausted
from corem_ingress.core.uplink import Uplink

if TYPE_CHECKING:
    from corem_ingress.services import Services

log = structlog.get_logger("corem.coap")

#: The close reason of a session refused by the per-tenant limit.
TENANT_LIMIT = "tenant session limit"
#: Closes of handshakes that say nothing about the peer's credential.
_NEUTRAL = ("replaced by a new handshake", "broker shutting down", TENANT_LIMIT)


#: The core's ResourceExhausted: 4.29 with Max-Age = ``retry_after_s``.
TooManyRequests = ResourceExhausted


def refusal_reason(reason: str) -> tuple[str | None, bool]:
    """(auth-failure label or None, counts against the source) for a failed handshake."""
    if "not vouched for" in reason:  # the cache cannot vouch: Redis unreachable
        return "unavailable", False
    if reason in ("psk refused", "certificate refused"):
        return "unknown_or_revoked", True
    if reason.startswith("certificate expired"):
        return "certificate_expired", True
    if reason.startswith(("certificate chain error", "certificate error")):
        return "bad_certificate", True
    if reason.startswith(("finished did not verify", "handshake failed")):
        return "handshake_failed", True  # wrong PSK, no common suite, ...
    if reason == "no credential":
        return "no_credential", True
    return None, False  # handshake timeout and other transport trouble


class CoapGuard:
    def __init__(self, services: Services, transport: str = "coap") -> None:
        self._s = services
        self.transport = transport
        #: Admitted sessions -> the tenant whose slot each holds.
        self._slots: dict[Address, str] = {}

    # -- called by the DTLS server/transport -------------------------------------------------
    def source_blocked(self, ip: str) -> bool:
        """Before any work on a ClientHello: True drops it (the source is throttled)."""
        if self._s.throttle.blocked(ip, self._s.clock()):
            metrics.limit_refused(self.transport, "auth_throttle")
            return True
        return False

    def handshake_started(self, addr: Address) -> None:
        """The source passed the cookie exchange: it now has handshake state."""
        metrics.connection_opened(self.transport)

    def handshake_rate_limited(self, addr: Address) -> None:
        """A verified ClientHello ignored by ``coap.handshake_rate_per_s`` for its source."""
        metrics.limit_refused(self.transport, "handshake_rate")

    def max_sessions_reached(self, addr: Address) -> None:
        """A verified ClientHello ignored because ``coap.max_sessions`` peers exist."""
        metrics.limit_refused(self.transport, "max_sessions")

    def admit(self, addr: Address, credential: Credential | None) -> bool:
        """A completed handshake: False refuses the session (the transport closes it)."""
        metrics.handshake(self.transport, ok=True)
        if credential is None:
            return True
        self._s.throttle.success(addr[0])
        tenant = credential.identity.tenant_id
        if not self._s.tenant_connections.acquire(tenant):
            metrics.limit_refused(self.transport, "tenant_connections")
            log.info("coap.session_refused", peer=addr[0], tenant=tenant, reason=TENANT_LIMIT)
            return False
        self._slots[addr] = tenant
        metrics.session_opened(self.transport, tenant)
        return True

    def closed(self, addr: Address, reason: str, established: bool) -> None:
        tenant = self._slots.pop(addr, None)
        if tenant is not None:
            self._s.tenant_connections.release(tenant)
        if established or reason in _NEUTRAL:
            return
        metrics.handshake(self.transport, ok=False)
        label, counts = refusal_reason(reason)
        if label is None:
            return
        metrics.auth_failure(self.transport, label)
        if counts and self._s.throttle.failure(addr[0], self._s.clock()):
            log.warning("coap.source_blocked", peer=addr[0], block_s=self._s.throttle.block_s)

    # -- uplinks -------------------------------------------------------------------------------
    def rate_limited(
        self, append: Callable[[Uplink], Awaitable[str]]
    ) -> Callable[[Uplink], Awaitable[str]]:
        """``append`` behind the per-device message rate (TooManyRequests beyond it)."""
        rate = self._s.device_rate
        if not rate.enabled:
            return append
        clock = self._s.clock
        transport = self.transport

        async def limited(uplink: Uplink) -> str:
            if not rate.allow(uplink.device_id, clock()):
                metrics.limit_refused(transport, "device_rate")
                raise TooManyRequests(
                    "this device's message rate limit is exceeded",
                    retry_after_s=max(1, math.ceil(1 / rate.rate_per_s)),
                    reason="device rate",
                )
            return await append(uplink)

        return limited
