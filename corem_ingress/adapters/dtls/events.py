"""What the DTLS server core reports to its user; drained with ``DtlsServer.next_event()``."""

from __future__ import annotations

from dataclasses import dataclass

from corem_ingress.core.causes import Cause
from corem_ingress.core.dtls_resumption import StoredSession
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.trust import PeerChain

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Credential:
    """What authenticated the peer, resolved through the resolver."""

    kind: CredentialKind
    #: The resolver's lookup handle: the PSK identity or the certificate fingerprint.
    lookup: str
    identity: DeviceIdentity
    #: X.509: the verified chain (re-checked when the tenant's trust anchors change).
    chain: PeerChain | None = None


@dataclass(frozen=True, slots=True)
class CredentialNeeded:
    """The handshake waits for the resolver: resolve ``lookup`` (async), then call
    ``DtlsServer.credential_resolved(addr, now)`` whatever the outcome."""

    addr: Address
    kind: CredentialKind
    lookup: str
    #: X.509: the presented certificate (DER), for just-in-time provisioning.
    der: bytes | None = None


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    addr: Address
    credential: Credential | None
    cipher: str


@dataclass(frozen=True, slots=True)
class ApplicationData:
    addr: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class SessionClosed:
    addr: Address
    #: Why: PEER_CLOSED, IDLE, HANDSHAKE_TIMEOUT, WRONG_KEY, UNKNOWN_OR_REVOKED, ...
    cause: Cause
    #: True if the handshake had completed (a HandshakeCompleted was reported).
    established: bool
    #: Free text for the log (e.g. OpenSSL's reason, a certificate error number).
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SessionLookup:
    """A ClientHello names a session id: look its stored session up (async), re-check its
    credential with the resolver, then call ``DtlsServer.session_found(addr, session_id,
    stored_or_None, now)`` whatever the outcome."""

    addr: Address
    session_id: bytes


@dataclass(frozen=True, slots=True)
class SessionIssued:
    """A full handshake issued a session id: store the session for a later resumption."""

    addr: Address
    session_id: bytes
    session: StoredSession


DtlsEvent = (
    CredentialNeeded
    | HandshakeCompleted
    | ApplicationData
    | SessionClosed
    | SessionLookup
    | SessionIssued
)
