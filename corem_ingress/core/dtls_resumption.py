"""What a DTLS full handshake leaves for a later resumption: plain data, stored sealed by
``store/dtls_sessions.py`` and resumed by ``adapters/dtls/resume.py``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StoredSession:
    """What a full handshake leaves for a later resumption (stored sealed, by session id)."""

    suite: int
    master: bytes
    #: RFC 7627: the session's master secret is the extended one.
    extended_master_secret: bool
    #: "psk" or "x509" (``CredentialKind`` value) and the resolver's lookup handle.
    kind: str
    lookup: str
    #: X.509: fingerprints of the verified chain above the leaf (the tenant CA re-check).
    chain: tuple[str, ...] = ()
    #: PSK: SHA-256 of the key it was made with (a changed key does not resume).
    secret_digest: bytes = b""
    #: X.509: the leaf's notAfter (seconds since the epoch; 0: none).
    not_after: float = 0.0
    #: X.509: the client certificate (DER), for what needs it later (LwM2M bootstrap).
    certificate: bytes = b""
