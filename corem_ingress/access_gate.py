"""The access policy (``core/access.py``) as one transport uses it: every decision counted
in the metrics and every new block logged, once, here — adapters only map a ``Refusal``
to their protocol's answer.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from corem_ingress import metrics
from corem_ingress.core.access import AccessPolicy, Refusal
from corem_ingress.core.causes import Cause

log = structlog.get_logger("corem.access")


class AccessGate:
    def __init__(self, policy: AccessPolicy, transport: str, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.transport = transport
        self._clock = clock

    def check_source(self, source: str) -> Refusal | None:
        refusal = self.policy.check_source(source, self._clock())
        if refusal is not None:
            metrics.limit_refused(self.transport, refusal.cause)
        return refusal

    def auth_failed(self, source: str, cause: Cause) -> None:
        """A credential refused (or not checkable) for ``cause``: counted; may block the source."""
        metrics.auth_failure(self.transport, cause)
        if self.policy.auth_failed(source, cause, self._clock()):
            log.warning(
                "access.source_blocked",
                transport=self.transport,
                peer=source,
                block_s=self.policy.throttle.block_s,
            )

    def open_session(self, tenant_id: str) -> Refusal | None:
        refusal = self.policy.open_session(tenant_id)
        if refusal is not None:
            metrics.limit_refused(self.transport, refusal.cause)
        return refusal

    def close_session(self, tenant_id: str) -> None:
        self.policy.close_session(tenant_id)

    def check_message(self, device_id: str) -> Refusal | None:
        refusal = self.policy.check_message(device_id, self._clock())
        if refusal is not None:
            metrics.limit_refused(self.transport, refusal.cause)
        return refusal

    def refused(self, cause: Cause) -> None:
        """A limit the transport enforces itself (sizes, DTLS sessions/handshake rate)."""
        metrics.limit_refused(self.transport, cause)
