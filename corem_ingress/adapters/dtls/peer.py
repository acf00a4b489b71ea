"""One DTLS peer's state in the server core: its SSL object, where its handshake is, what
we know of its credential and its flight. Plain data, no logic."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from OpenSSL import SSL

from corem_ingress.adapters.dtls.cid_session import CidSession
from corem_ingress.adapters.dtls.events import Address, Credential
from corem_ingress.adapters.dtls.records import HandshakePeek
from corem_ingress.adapters.dtls.resume import IssuedHello, ResumedHandshake
from corem_ingress.core.causes import Cause
from corem_ingress.core.identity import CredentialKind


class PeerState(Enum):
    HANDSHAKE = "handshake"
    AWAITING_CREDENTIAL = "awaiting_credential"
    #: The ClientHello names a session id: its stored session is being looked up.
    AWAITING_SESSION = "awaiting_session"
    ESTABLISHED = "established"


# slots: one per DTLS session, tens of thousands per node (bench.session_memory).
@dataclass(eq=False, slots=True)
class Peer:
    id: int
    addr: Address
    #: None for a resumed session (our own abbreviated handshake and record layer) and
    #: while its stored session is looked up.
    conn: SSL.Connection | None
    started: float
    last_seen: float
    #: The random of the ClientHello that opened it (a new random is a new connection).
    client_random: bytes = b""
    state: PeerState = PeerState.HANDSHAKE
    credential: Credential | None = None
    peek: HandshakePeek = field(default_factory=HandshakePeek)
    held: list[bytes] = field(default_factory=list)
    looked_up: set[tuple[CredentialKind, str]] = field(default_factory=set)
    #: Why the handshake was refused, when a callback refused it (cause, detail).
    refusal: tuple[Cause, str] | None = None
    #: The alert to send instead of OpenSSL's when our policy refused (the cause's alert).
    alert: int | None = None
    #: The suite our ServerHello chose (peeked from our own output).
    suite: int | None = None
    #: Not closed as idle before this (``now`` clock; ``DtlsServer.keep_alive``).
    keep_until: float = 0.0
    #: The client's own fatal alert seen during the handshake (description), if any.
    client_alert: int | None = None
    #: Fingerprints of the verified chain above the leaf, by depth (the verify callback
    #: sees the top first); checked against the tenant's CAs at depth 0.
    chain_above_leaf: dict[int, str] = field(default_factory=dict)
    #: The Connection ID state when the client offered the extension (RFC 9146).
    cid: CidSession | None = None
    #: Where the peer is now, when an authenticated CID record moved it (NAT rebinding);
    #: ``addr`` stays the session's name for the layers above.
    remote: Address | None = None
    #: The node the peer now talks to, when its records reach us forwarded by that node
    #: (our datagrams go back through it).
    via: Address | None = None

    #: Our abbreviated handshake, while it runs (session resumption).
    resumed: ResumedHandshake | None = None
    #: The session id the client asked to resume (``AWAITING_SESSION``).
    resume_id: bytes = b""
    #: SHA-256 of the PSK the handshake used (kept for a later resumption's re-check).
    secret_digest: bytes = b""
    #: The leaf certificate's notAfter (seconds since the epoch), for the same.
    not_after: float = 0.0
    #: The ServerHello of our full handshake (its session id, suite and extensions).
    issued: IssuedHello | None = None
    #: The client offered the extended master secret (RFC 7627) in its ClientHello.
    offered_ems: bool = False

    #: Our last epoch-1 flight (ChangeCipherSpec + Finished) as sent, and OpenSSL's next
    #: epoch-1 write sequence number: what the session needs once OpenSSL is let go.
    last_flight: list[bytes] = field(default_factory=list)
    next_write_seq: int = 0
    #: The client certificate (DER) of a session without its SSL object.
    certificate_der: bytes | None = None

    @property
    def destination(self) -> Address:
        """Where our datagrams go."""
        return self.remote or self.addr
