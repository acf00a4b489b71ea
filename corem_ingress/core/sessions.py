"""The live-session registry of one node: credential -> sessions, and the disconnect orders.

Adapters register each authenticated session; a revocation (or the end of an
API-key overlap window) yields orders for exactly that credential's sessions,
which the adapters carry out (MQTT close, DTLS close_notify, ...). Pure: the
orders are data, the clock is an argument.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from corem_ingress.core.causes import Cause
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.trust import PeerChain


@dataclass(frozen=True, slots=True)
class LiveSession:
    session_id: str
    transport: str
    identity: DeviceIdentity
    #: The resolver lookup handle (key hash, PSK identity, fingerprint), for re-validation.
    lookup: str
    credential_expires_at: float | None = None
    #: X.509: the chain the device authenticated with (re-checked when its tenant's trust
    #: anchors change).
    chain: PeerChain | None = None
    #: The peer's address ("ip:port"), for the operator's view of live sessions.
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class DisconnectOrder:
    session_id: str
    transport: str
    identity: DeviceIdentity
    cause: Cause


_CredKey = tuple[CredentialKind, str]


class SessionRegistry:
    def __init__(self) -> None:
        self._sessions: dict[str, LiveSession] = {}
        self._by_credential: dict[_CredKey, set[str]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def register(self, session: LiveSession) -> None:
        if session.session_id in self._sessions:
            self.unregister(session.session_id)
        self._sessions[session.session_id] = session
        key = (session.identity.credential_kind, session.identity.credential_id)
        self._by_credential.setdefault(key, set()).add(session.session_id)

    def unregister(self, session_id: str) -> LiveSession | None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return None
        key = (session.identity.credential_kind, session.identity.credential_id)
        ids = self._by_credential.get(key)
        if ids is not None:
            ids.discard(session_id)
            if not ids:
                del self._by_credential[key]
        return session

    def get(self, session_id: str) -> LiveSession | None:
        return self._sessions.get(session_id)

    def sessions(self) -> list[LiveSession]:
        return list(self._sessions.values())

    def sessions_of(self, kind: CredentialKind, credential_id: str) -> list[LiveSession]:
        return [
            self._sessions[s] for s in sorted(self._by_credential.get((kind, credential_id), ()))
        ]

    def revoke(
        self, kind: CredentialKind, credential_id: str, cause: Cause = Cause.CREDENTIAL_REVOKED
    ) -> list[DisconnectOrder]:
        """Orders for every session of this credential; they leave the registry at once."""
        return self._drop(self.sessions_of(kind, credential_id), cause)

    def revoke_sessions(self, session_ids: Iterable[str], cause: Cause) -> list[DisconnectOrder]:
        found = [self._sessions[s] for s in session_ids if s in self._sessions]
        return self._drop(found, cause)

    def set_credential_expiry(
        self, kind: CredentialKind, credential_id: str, expires_at: float
    ) -> None:
        for s in self.sessions_of(kind, credential_id):
            self._sessions[s.session_id] = dataclasses.replace(s, credential_expires_at=expires_at)

    def sessions_of_tenant(self, tenant_id: str, kind: CredentialKind) -> list[LiveSession]:
        """The tenant's sessions authenticated by a credential of ``kind``."""
        return [
            s
            for s in self._sessions.values()
            if s.identity.tenant_id == tenant_id and s.identity.credential_kind is kind
        ]

    def next_expiry(self) -> float | None:
        times = [
            s.credential_expires_at
            for s in self._sessions.values()
            if s.credential_expires_at is not None
        ]
        return min(times) if times else None

    def due(self, now: float) -> list[DisconnectOrder]:
        """Orders for sessions whose credential's overlap window has ended."""
        expired = [
            s
            for s in self._sessions.values()
            if s.credential_expires_at is not None and now >= s.credential_expires_at
        ]
        return self._drop(expired, Cause.CREDENTIAL_EXPIRED)

    def _drop(self, sessions: list[LiveSession], cause: Cause) -> list[DisconnectOrder]:
        orders = []
        for s in sessions:
            self.unregister(s.session_id)
            orders.append(DisconnectOrder(s.session_id, s.transport, s.identity, cause))
        return orders
