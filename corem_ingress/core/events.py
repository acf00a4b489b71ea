"""Credential events carried by the revocation bus (Redis pub/sub), as plain dataclasses.

Every credential change publishes one. Nodes use them to evict cache entries and
to turn a revocation into disconnect orders for their live sessions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from corem_ingress.core.identity import CredentialKind


class EventType(StrEnum):
    #: A credential now resolves (evicts negative cache entries).
    CREATED = "created"
    #: A credential stops resolving now: evict and disconnect its sessions.
    REVOKED = "revoked"
    #: A credential will stop resolving at ``expires_at`` (API-key rotation overlap).
    EXPIRES = "expires"
    #: The tenant's trust anchors or self-signed setting changed (kind x509, ``lookup`` the
    #: CA fingerprint or "settings", no device): re-check the tenant's certificate sessions.
    TRUST = "trust"


@dataclass(frozen=True, slots=True)
class CredentialEvent:
    type: EventType
    kind: CredentialKind
    #: The resolver's lookup handle: API-key hash, PSK identity or certificate fingerprint.
    lookup: str
    credential_id: str
    tenant_id: str
    device_id: str
    #: UNIX time at which the change was made (the publisher's clock).
    at: float
    expires_at: float | None = None

    def encode(self) -> bytes:
        return json.dumps(
            {
                "type": self.type.value,
                "kind": self.kind.value,
                "lookup": self.lookup,
                "credential_id": self.credential_id,
                "tenant_id": self.tenant_id,
                "device_id": self.device_id,
                "at": self.at,
                "expires_at": self.expires_at,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> CredentialEvent:
        """Parse a bus message; raises ValueError on anything malformed."""
        try:
            raw = json.loads(data)
            expires = raw.get("expires_at")
            return cls(
                type=EventType(raw["type"]),
                kind=CredentialKind(raw["kind"]),
                lookup=str(raw["lookup"]),
                credential_id=str(raw["credential_id"]),
                tenant_id=str(raw["tenant_id"]),
                device_id=str(raw["device_id"]),
                at=float(raw["at"]),
                expires_at=None if expires is None else float(expires),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed credential event: {exc.__class__.__name__}") from None
