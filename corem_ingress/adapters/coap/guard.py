"""Metrics and limits of the CoAP/DTLS listener, kept out of the protocol code (the one
access policy, ``core/access.py``, through ``access_gate.AccessGate``).

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

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from corem_ingress import metrics
from corem_ingress.access_gate import AccessGate
from corem_ingress.adapters.dtls.events import Address, Credential
from corem_ingress.core.causes import Cause, CauseGroup
from corem_ingress.core.errors import ResourceExhausted
from corem_ingress.core.uplink import Uplink

if TYPE_CHECKING:
    from corem_ingress.services import Services

log = structlog.get_logger("corem.coap")

#: Closes of handshakes that say nothing about the peer or its credential.
_NEUTRAL = frozenset({Cause.REPLACED, Cause.SHUTTING_DOWN, Cause.TENANT_CONNECTIONS})


class CoapGuard:
    def __init__(self, services: Services, transport: str = "coap") -> None:
        self._s = services
        self.transport = transport
        self.gate = AccessGate(services.access, transport, services.clock)
        #: Admitted sessions -> the tenant whose slot each holds.
        self._slots: dict[Address, str] = {}

    # -- called by the DTLS server/transport -------------------------------------------------
    def source_blocked(self, ip: str) -> bool:
        """Before any work on a ClientHello: True drops it (the source is throttled)."""
        return self.gate.check_source(ip) is not None

    def handshake_started(self, addr: Address) -> None:
        """The source passed the cookie exchange: it now has handshake state."""
        metrics.connection_opened(self.transport)

    def handshake_rate_limited(self, addr: Address) -> None:
        """A verified ClientHello ignored by ``coap.handshake_rate_per_s`` for its source."""
        self.gate.refused(Cause.HANDSHAKE_RATE)

    def pending_handshakes_refused(self, addr: Address) -> None:
        """A verified ClientHello ignored by ``coap.max_pending_handshakes`` (in total) or
        ``coap.max_pending_handshakes_per_source``."""
        self.gate.refused(Cause.PENDING_HANDSHAKES)

    def max_sessions_reached(self, addr: Address) -> None:
        """A verified ClientHello ignored because ``coap.max_sessions`` peers exist."""
        self.gate.refused(Cause.MAX_SESSIONS)

    def admit(self, addr: Address, credential: Credential | None) -> bool:
        """A completed handshake: False refuses the session (the transport closes it)."""
        metrics.handshake(self.transport, ok=True)
        if credential is None:
            return True
        tenant = credential.identity.tenant_id
        if self.gate.open_session(tenant) is not None:
            log.info(
                "coap.session_refused",
                peer=addr[0],
                tenant=tenant,
                cause=Cause.TENANT_CONNECTIONS.label,
            )
            return False
        self._slots[addr] = tenant
        metrics.session_opened(self.transport, tenant)
        return True

    def closed(self, addr: Address, cause: Cause, established: bool, detail: str) -> None:
        if established:
            tenant = self._slots.pop(addr, None)
            if tenant is not None:
                self.gate.close_session(tenant)
            return
        # A handshake that never completed holds no slot (a session at the same address,
        # if any, keeps its own: RFC 6347 4.2.8).
        if cause in _NEUTRAL:
            return
        metrics.handshake(self.transport, ok=False)
        if cause.group is CauseGroup.AUTH:
            # Only handshakes that passed the cookie exchange get here: the address is real.
            self.gate.auth_failed(addr[0], cause)

    # -- uplinks -------------------------------------------------------------------------------
    def rate_limited(
        self, append: Callable[[Uplink], Awaitable[str]]
    ) -> Callable[[Uplink], Awaitable[str]]:
        """``append`` behind the per-device message rate (4.29 + Max-Age beyond it)."""
        if not self._s.access.device_rate.enabled:
            return append
        gate = self.gate

        async def limited(uplink: Uplink) -> str:
            refusal = gate.check_message(uplink.device_id)
            if refusal is not None:
                raise ResourceExhausted(
                    "this device's message rate limit is exceeded",
                    retry_after_s=refusal.retry_after_s,
                    cause=refusal.cause,
                )
            return await append(uplink)

        return limited
