"""CONNECT admission: from a CONNECT (and the TLS peer's certificate) to an admitted
session, or a refusal ``Cause`` whose CONNACK code the connection core sends.

In order: the source's throttle (``core/access.py``), the credential through the one
resolver (``auth.authenticate``), the live-session registration (verified again after
registering, so a revocation racing the lookup is never missed), the tenant's
connection slot. Every refusal is counted and logged once here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from corem_ingress.access_gate import AccessGate
from corem_ingress.adapters.mqtt.auth import Authenticated, authenticate
from corem_ingress.adapters.mqtt.codec import Connect
from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import IngressError
from corem_ingress.core.sessions import LiveSession
from corem_ingress.core.trust import PeerChain
from corem_ingress.core.uplink import Transport
from corem_ingress.session_hub import Disconnect

if TYPE_CHECKING:
    from corem_ingress.adapters.mqtt.listener import MqttListener
    from corem_ingress.adapters.mqtt.protocol import MqttProtocol

log = structlog.get_logger("corem.mqtt")


@dataclass(frozen=True, slots=True)
class Admitted:
    auth: Authenticated
    session_id: str
    #: The tenant whose connection slot the session holds (give it back on close).
    slot: str


@dataclass(frozen=True, slots=True)
class Refused:
    cause: Cause
    detail: str = ""


async def admit(
    listener: MqttListener,
    gate: AccessGate,
    connect: Connect,
    conn: MqttProtocol,
    *,
    ip: str,
    peer: str,
    fingerprint: str | None,
    disconnect: Disconnect,
    is_closed: Callable[[], bool],
    chain: PeerChain | None = None,
) -> Admitted | Refused:
    """Decide on one CONNECT. ``is_closed`` tells whether the socket went away meanwhile."""
    services = listener.services
    # Blocked while this connection was being set up: no credential work.
    if gate.check_source(ip) is not None:
        listener.count("throttled")
        return Refused(Cause.AUTH_THROTTLE)
    try:
        auth = await authenticate(
            services.resolver,
            connect,
            fingerprint,
            client_auth=listener.config.client_auth,
            chain=chain,
            der=conn.tls.peer_certificate_der() if fingerprint is not None else None,
        )
    except IngressError as exc:
        gate.auth_failed(ip, exc.cause)
        return _refused(listener, peer, exc.cause, exc.reason)
    if is_closed():
        return Refused(Cause.PEER_CLOSED)
    session_id = listener.new_session_id()
    identity = auth.identity
    session = LiveSession(
        session_id, Transport.MQTT.value, identity, auth.lookup, chain=auth.chain, peer=peer
    )
    try:
        await services.sessions.register_verified(session, disconnect)
    except IngressError as exc:
        gate.auth_failed(ip, exc.cause)
        return _refused(listener, peer, exc.cause, exc.reason)
    if is_closed():
        services.sessions.unregister(session_id)
        return Refused(Cause.PEER_CLOSED)
    # A device reconnecting while its old connection is still open takes that one's
    # slot: the take-over closes the old connection first.
    old = listener.holder(identity.device_id)
    if old is not None and gate.policy.tenant_full(identity.tenant_id):
        listener.claim(identity.device_id, conn)
    if gate.open_session(identity.tenant_id) is not None:
        # CONNACK 3 (server unavailable), retried by clients with back-off (another node
        # behind the load balancer may have room); not an authentication failure.
        services.sessions.unregister(session_id)
        listener.count("tenant_limit")
        return _refused(listener, peer, Cause.TENANT_CONNECTIONS, "tenant connection limit")
    return Admitted(auth, session_id, identity.tenant_id)


def _refused(listener: MqttListener, peer: str, cause: Cause, detail: str) -> Refused:
    listener.count("connect_refused")
    log.info(
        "mqtt.connect_refused", peer=peer, code=cause.connack, cause=cause.label, detail=detail
    )
    return Refused(cause, detail)
