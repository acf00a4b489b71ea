"""The DTLS 1.2 server core: PSK and X.509 on one UDP port, no I/O.

Driven like aioquic's connection: ``receive_datagram(data, addr, now)``,
``handle_timer(now)``, and calls from the user (``send``, ``close``,
``credential_resolved``). Output is drained with ``datagrams_to_send()`` (whole
DTLS records, each datagram within the MTU) and events with ``next_event()``.

* No state before a valid cookie: a ClientHello without one is answered with a
  HelloVerifyRequest by one shared listening SSL object (``DTLSv1_listen``) and
  forgotten. Only a ClientHello carrying a cookie we minted for that address
  (and within the per-source handshake rate) gets a per-peer SSL object.
* Credentials: OpenSSL asks for the PSK / verifies the leaf synchronously, so
  before OpenSSL sees the client's second flight we peek at its plaintext
  Certificate / ClientKeyExchange. If the resolver's cache cannot vouch for that
  credential, the datagram is *held*, a ``CredentialNeeded`` event asks the user
  to resolve it (async, fills the cache), and ``credential_resolved`` feeds the
  held datagrams to OpenSSL. The callbacks then decide from the cache alone: a
  cache that still cannot vouch (Redis down) refuses — fail closed.
* Retransmission of handshake flights is OpenSSL's own DTLS timer
  (``DTLSv1_get_timeout`` / ``DTLSv1_handle_timeout``, 1 s doubling); a handshake
  not finished within ``handshake_timeout`` is dropped, an established session
  idle for ``idle_timeout`` is closed.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

from OpenSSL import SSL, crypto

from corem_ingress.adapters.dtls import _binding
from corem_ingress.adapters.dtls.cookies import CookieJar
from corem_ingress.adapters.dtls.events import (
    Address,
    ApplicationData,
    Credential,
    CredentialNeeded,
    DtlsEvent,
    HandshakeCompleted,
    SessionClosed,
)
from corem_ingress.adapters.dtls.ratelimit import RateLimiter
from corem_ingress.adapters.dtls.records import (
    CT_CHANGE_CIPHER_SPEC,
    CT_HANDSHAKE,
    PSK_SUITES,
    HandshakePeek,
    alert_record,
    client_hello_cookie,
    pack_datagrams,
    server_hello_suite,
    split_records,
)
from corem_ingress.core.causes import ALERT_DECRYPT_ERROR, Cause
from corem_ingress.core.certs import fingerprint_der
from corem_ingress.core.errors import IngressError
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.trust import PeerChain

#: Explicit list: the CoAP/LwM2M mandatory CCM8 suites and GCM suites. The CCM8
#: suites need @SECLEVEL=0 with OpenSSL 3+; nothing weaker is listed.
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-CCM:"
    "PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-AES128-CCM8:PSK-AES128-CCM:"
    "@SECLEVEL=0"
)

_X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT = 18
_MAX_HELD = 32
_READ_CHUNK = 65_536


class CredentialCache(Protocol):
    """The resolver's synchronous cache (``corem_ingress.resolver.Resolver``)."""

    def cached_psk(self, identity: str) -> Any: ...  # ResolvedPsk | None

    def cached_cert(
        self, fingerprint: str, chain: PeerChain | None = None
    ) -> DeviceIdentity | None: ...


@dataclass
class DtlsConfig:
    """Limits of the DTLS server (from ``CoapConfig``)."""

    #: Link MTU: every datagram we send carries whole records within this size.
    mtu: int = 1280
    #: A handshake must finish within this many seconds, else its state is dropped.
    handshake_timeout: float = 10.0
    #: An established session with no datagram from the peer for this long is closed.
    idle_timeout: float = 300.0
    #: Handshaking + established peers; beyond it new handshakes are ignored.
    max_sessions: int = 10_000
    #: Handshakes per second per source IP (token bucket), and its burst.
    handshake_rate: float = 10.0
    handshake_burst: float = 20.0
    #: How long a cookie stays valid (it is checked for this and the previous period).
    cookie_lifetime: float = 60.0
    #: Certificates are checked against this clock (seconds since the epoch).
    check_cert_validity: bool = True


class PeerState(Enum):
    HANDSHAKE = "handshake"
    AWAITING_CREDENTIAL = "awaiting_credential"
    ESTABLISHED = "established"


@dataclass(eq=False)
class _Peer:
    addr: Address
    conn: SSL.Connection
    started: float
    last_seen: float
    state: PeerState = PeerState.HANDSHAKE
    credential: Credential | None = None
    peek: HandshakePeek = field(default_factory=HandshakePeek)
    held: list[bytes] = field(default_factory=list)
    looked_up: set[tuple[CredentialKind, str]] = field(default_factory=set)
    #: Why the handshake was refused, when a callback refused it (cause, detail).
    refusal: tuple[Cause, str] | None = None
    #: The suite our ServerHello chose (peeked from our own output).
    suite: int | None = None
    #: The user keeps the session open at least until then, however idle (``keep_alive``).
    keep_until: float = 0.0
    #: Fingerprints of the verified chain above the leaf, by depth (the verify callback
    #: sees the top first); checked against the tenant's CAs at depth 0.
    chain_above_leaf: dict[int, str] = field(default_factory=dict)

    def idle_deadline(self, idle_timeout: float) -> float:
        """When the established session is closed as idle."""
        return max(self.last_seen + idle_timeout, self.keep_until)


class DtlsServer:
    def __init__(
        self,
        *,
        cert_file: str | None,
        key_file: str | None,
        ca_files: list[str],
        credentials: CredentialCache,
        config: DtlsConfig | None = None,
    ) -> None:
        _binding.check_binding()
        self.config = config or DtlsConfig()
        self._credentials = credentials
        self._cookies = CookieJar(lifetime=self.config.cookie_lifetime)
        self._rate = RateLimiter(self.config.handshake_rate, self.config.handshake_burst)
        self._ctx = self._make_context(cert_file, key_file, ca_files)
        self._peers: dict[Address, _Peer] = {}
        #: Peers still handshaking: the only ones with OpenSSL retransmission timers.
        self._pending: dict[Address, _Peer] = {}
        self._listener: SSL.Connection | None = None
        self._listen_addr: Address = ("", 0)
        self._checked_cookie: bytes | None = None
        self._now = 0.0
        self._out: list[tuple[bytes, Address]] = []
        self._events: collections.deque[DtlsEvent] = collections.deque()
        self._next_sweep = 0.0
        self.stats: collections.Counter[str] = collections.Counter()
        #: Asked (source IP) before any work on a ClientHello: True drops it silently
        #: (failed-authentication throttling; see adapters/coap/guard.py).
        self.source_blocked: Callable[[str], bool] | None = None
        #: Told when a source passed the cookie exchange and gets handshake state.
        self.on_handshake_started: Callable[[Address], None] | None = None
        #: Told when a handshake with a valid cookie is refused because ``max_sessions`` is full.
        self.on_max_sessions: Callable[[Address], None] | None = None
        #: Told when a handshake with a valid cookie is refused by the per-source rate limit.
        self.on_rate_limited: Callable[[Address], None] | None = None

    # -- setup ----------------------------------------------------------------------------
    def _make_context(
        self, cert_file: str | None, key_file: str | None, ca_files: list[str]
    ) -> SSL.Context:
        ctx = SSL.Context(SSL.DTLS_SERVER_METHOD)
        ctx.set_min_proto_version(_binding.DTLS1_2_VERSION)
        ctx.set_max_proto_version(_binding.DTLS1_2_VERSION)
        ctx.set_cipher_list(CIPHERS.encode())
        ctx.set_options(
            SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
        )
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        if cert_file and key_file:
            ctx.use_certificate_chain_file(cert_file)
            ctx.use_privatekey_file(key_file)
            ctx.check_privatekey()
        for ca in ca_files:
            ctx.load_verify_locations(ca)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        ctx.set_cookie_generate_callback(self._cookie_generate)
        ctx.set_cookie_verify_callback(self._cookie_verify)
        _binding.set_psk_server_callback(ctx, self._psk)
        return ctx

    # -- user API --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._peers)

    def established(self) -> list[Address]:
        return [a for a, p in self._peers.items() if p.state is PeerState.ESTABLISHED]

    def credential_of(self, addr: Address) -> Credential | None:
        peer = self._peers.get(addr)
        return None if peer is None else peer.credential

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> DtlsEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[DtlsEvent]:
        while self._events:
            yield self._events.popleft()

    def send(self, addr: Address, data: bytes) -> bool:
        """Application data to an established peer (one record). False if no such session."""
        peer = self._peers.get(addr)
        if peer is None or peer.state is not PeerState.ESTABLISHED:
            return False
        try:
            peer.conn.send(data)
        except SSL.Error:
            self._drop(peer, Cause.TRANSPORT_ERROR, "write failed")
            return False
        self._flush(peer)
        return True

    def close(self, addr: Address, cause: Cause = Cause.CLOSED_BY_SERVER) -> bool:
        """Send close_notify and forget the session at once."""
        peer = self._peers.get(addr)
        if peer is None:
            return False
        if peer.state is PeerState.ESTABLISHED:
            with contextlib.suppress(SSL.Error):
                peer.conn.shutdown()
            self._flush(peer)
        self._drop(peer, cause)
        return True

    def keep_alive(self, addr: Address, until: float) -> bool:
        """Do not close the established session as idle before ``until`` (on the ``now``
        clock): the LwM2M server keeps a registered device's session for as long as its
        registration lives. ``until`` 0 gives it back to the idle timeout."""
        peer = self._peers.get(addr)
        if peer is None or peer.state is not PeerState.ESTABLISHED:
            return False
        peer.keep_until = until
        return True

    def credential_resolved(self, addr: Address, now: float) -> None:
        """The async lookup asked for by CredentialNeeded is done (whatever its outcome)."""
        self._now = now
        peer = self._peers.get(addr)
        if peer is None or peer.state is not PeerState.AWAITING_CREDENTIAL:
            return
        peer.state = PeerState.HANDSHAKE
        held, peer.held = peer.held, []
        for data in held:
            if addr not in self._peers:
                break
            self._handshake_datagram(peer, data)

    # -- input -----------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self._now = now
        peer = self._peers.get(addr)
        cookie = client_hello_cookie(data)
        if peer is None or (cookie is not None and peer.state is PeerState.ESTABLISHED):
            if cookie is None:
                self.stats["dropped_no_session"] += 1
                return
            if self.source_blocked is not None and self.source_blocked(addr[0]):
                self.stats["dropped_throttled"] += 1
                return
            self._stateless(data, addr, cookie, replacing=peer)
            return
        peer.last_seen = now
        if peer.state is PeerState.ESTABLISHED:
            self._application_datagram(peer, data)
        elif peer.state is PeerState.AWAITING_CREDENTIAL:
            if len(peer.held) < _MAX_HELD:
                peer.held.append(data)
        else:
            self._handshake_datagram(peer, data)

    def handle_timer(self, now: float) -> None:
        self._now = now
        if now >= self._next_sweep:
            self._next_sweep = now + self.sweep_interval
            for peer in list(self._peers.values()):
                idle = now >= peer.idle_deadline(self.config.idle_timeout)
                if peer.state is PeerState.ESTABLISHED and idle:
                    self.close(peer.addr, Cause.IDLE)
        for peer in list(self._pending.values()):
            if now - peer.started >= self.config.handshake_timeout:
                self._drop(peer, Cause.HANDSHAKE_TIMEOUT)
                continue
            if peer.state is PeerState.HANDSHAKE:
                timeout = peer.conn.DTLSv1_get_timeout()
                if timeout is not None and timeout <= 0:
                    try:
                        peer.conn.DTLSv1_handle_timeout()
                    except SSL.Error as exc:
                        self._drop(peer, Cause.HANDSHAKE_FAILED, _ssl_reason(exc))
                        continue
                    self._flush(peer)

    @property
    def sweep_interval(self) -> float:
        return max(0.05, min(5.0, self.config.idle_timeout / 4))

    def next_timer(self, now: float) -> float | None:
        """When ``handle_timer`` should next run (absolute, on the ``now`` clock)."""
        best: float | None = None
        if len(self._peers) > len(self._pending):
            best = max(self._next_sweep, now)
        for peer in self._pending.values():
            t = peer.started + self.config.handshake_timeout
            if peer.state is PeerState.HANDSHAKE:
                retrans = peer.conn.DTLSv1_get_timeout()
                if retrans is not None:
                    t = min(t, now + max(0.0, retrans))
            best = t if best is None else min(best, t)
        return best

    # -- stateless part --------------------------------------------------------------------
    def _stateless(
        self, data: bytes, addr: Address, cookie: bytes, replacing: _Peer | None
    ) -> None:
        valid = self._cookies.check(addr, cookie, self._now) if cookie else False
        # OpenSSL's verify callback asks again for the same hello: answer from this check.
        self._checked_cookie = cookie if valid else None
        if valid:
            if replacing is None and len(self._peers) >= self.config.max_sessions:
                self.stats["refused_max_sessions"] += 1
                if self.on_max_sessions is not None:
                    self.on_max_sessions(addr)
                return
            if not self._rate.allow(addr[0], self._now):
                self.stats["refused_rate"] += 1
                if self.on_rate_limited is not None:
                    self.on_rate_limited(addr)
                return
        listener = self._listener
        if listener is None:
            listener = self._listener = self._new_connection()
        self._listen_addr = addr
        listener.bio_write(data)
        try:
            listener.DTLSv1_listen()
        except SSL.WantReadError:
            self._send_raw(listener, addr)  # the HelloVerifyRequest, if any
            self.stats["hello_verify"] += 1
            return
        except SSL.Error:
            self._listener = None  # garbage: never reuse an SSL object in an unknown state
            self.stats["dropped_bad_hello"] += 1
            return
        # Cookie verified by OpenSSL too: this SSL object becomes the peer's.
        self._listener = None
        if replacing is not None:
            self._drop(replacing, Cause.REPLACED)
        peer = _Peer(addr, listener, self._now, self._now)
        listener.set_app_data(peer)
        self._peers[addr] = peer
        self._pending[addr] = peer
        self.stats["handshakes_started"] += 1
        if self.on_handshake_started is not None:
            self.on_handshake_started(addr)
        self._advance(peer)

    def _new_connection(self) -> SSL.Connection:
        conn = SSL.Connection(self._ctx, None)
        conn.set_accept_state()
        _binding.set_mtu(conn, self.config.mtu - 28)  # minus IPv4 + UDP headers
        return conn

    def _cookie_generate(self, conn: SSL.Connection) -> bytes:
        return self._cookies.make(self._listen_addr, self._now)

    def _cookie_verify(self, conn: SSL.Connection, cookie: bytes) -> bool:
        if self._checked_cookie is not None and cookie == self._checked_cookie:
            return True
        return self._cookies.check(self._listen_addr, cookie, self._now)

    # -- handshake -------------------------------------------------------------------------
    def _handshake_datagram(self, peer: _Peer, data: bytes) -> None:
        needed = self._peek(peer, data)
        if needed is not None:
            peer.state = PeerState.AWAITING_CREDENTIAL
            peer.held.append(data)
            peer.looked_up.add(needed)
            self._events.append(CredentialNeeded(peer.addr, needed[0], needed[1]))
            return
        peer.conn.bio_write(data)
        self._advance(peer)
        if peer.state is PeerState.HANDSHAKE and peer.addr in self._peers:
            self._check_finished(peer, data)

    def _check_finished(self, peer: _Peer, data: bytes) -> None:
        """DTLS drops records that fail their MAC silently, so a client with the wrong PSK
        would leave a half-open handshake until the timeout. If the client's key exchange
        was fed and its CCS + Finished came in this datagram and the handshake still did
        not complete, the Finished did not decrypt: refuse with a fatal alert now."""
        if peer.peek.psk_identity is None and peer.peek.certificate_der is None:
            return
        kinds = [(r.content_type, r.epoch) for r in split_records(data)]
        if (CT_CHANGE_CIPHER_SPEC, 0) in kinds and (CT_HANDSHAKE, 1) in kinds:
            self._out.append((alert_record(ALERT_DECRYPT_ERROR), peer.addr))
            self._drop(peer, *(peer.refusal or (Cause.WRONG_KEY, "finished did not verify")))

    def _peek(self, peer: _Peer, data: bytes) -> tuple[CredentialKind, str] | None:
        """A credential in this datagram that the cache cannot vouch for yet, if any."""
        peek = peer.peek
        had_cert, had_psk = peek.certificate_der is not None, peek.psk_identity is not None
        peek.feed(data)
        wanted: tuple[CredentialKind, str] | None = None
        if not had_cert and peek.certificate_der is not None:
            wanted = (CredentialKind.X509, fingerprint_der(peek.certificate_der))
        elif not had_psk and peek.psk_identity is not None and self._is_psk(peer):
            try:
                wanted = (CredentialKind.PSK, peek.psk_identity.decode())
            except UnicodeDecodeError:
                return None
        if wanted is None or wanted in peer.looked_up:
            return None
        try:
            if wanted[0] is CredentialKind.PSK:
                known = self._credentials.cached_psk(wanted[1]) is not None
            else:
                known = self._credentials.cached_cert(wanted[1]) is not None
        except IngressError:
            known = True  # the cache knows it is bad: let the callback refuse it now
        return None if known else wanted

    @staticmethod
    def _is_psk(peer: _Peer) -> bool:
        return peer.suite in PSK_SUITES

    def _advance(self, peer: _Peer) -> None:
        try:
            peer.conn.do_handshake()
        except SSL.WantReadError:
            self._flush(peer)
            return
        except SSL.Error as exc:
            self._flush(peer)  # the alert
            self._drop(peer, *(peer.refusal or (Cause.HANDSHAKE_FAILED, _ssl_reason(exc))))
            return
        self._flush(peer)
        if peer.credential is None:
            # Cannot happen with VERIFY_FAIL_IF_NO_PEER_CERT and the PSK callback, but
            # never keep an unauthenticated session.
            self.close(peer.addr, Cause.NO_CREDENTIAL)
            return
        peer.state = PeerState.ESTABLISHED
        self._pending.pop(peer.addr, None)
        peer.held.clear()
        peer.peek = HandshakePeek()
        peer.looked_up.clear()
        self.stats["handshakes_completed"] += 1
        self._events.append(
            HandshakeCompleted(peer.addr, peer.credential, peer.conn.get_cipher_name() or "")
        )
        self._read_application(peer)

    def _psk(self, conn: SSL.Connection, identity: bytes) -> bytes | None:
        peer: _Peer = conn.get_app_data()
        try:
            text = identity.decode()
        except UnicodeDecodeError:
            peer.refusal = (Cause.MALFORMED, "psk identity is not UTF-8")
            return None
        try:
            resolved = self._credentials.cached_psk(text)
        except IngressError as exc:
            peer.refusal = (exc.cause, "psk")
            return None
        if resolved is None:
            peer.refusal = (Cause.UNAVAILABLE, "psk not vouched for by the resolver cache")
            return None
        peer.credential = Credential(CredentialKind.PSK, text, resolved.identity)
        key: bytes = resolved.psk
        return key

    def _verify(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        peer: _Peer | None = conn.get_app_data()
        if peer is None:
            return False
        if depth > 0:
            if not ok:
                peer.refusal = (Cause.BAD_CERTIFICATE, f"chain error {errno}")
            else:
                der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
                peer.chain_above_leaf[depth] = fingerprint_der(der)
            return bool(ok)
        if not ok and errno != _X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
            peer.refusal = (Cause.BAD_CERTIFICATE, f"certificate error {errno}")
            return False
        c = cert.to_cryptography()
        if self.config.check_cert_validity:
            now = datetime.fromtimestamp(self._now, UTC)
            if not c.not_valid_before_utc <= now <= c.not_valid_after_utc:
                peer.refusal = (Cause.CERTIFICATE_EXPIRED, "outside its validity period")
                return False
        fp = fingerprint_der(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert))
        above = peer.chain_above_leaf
        chain = PeerChain(tuple(above[d] for d in sorted(above)))
        try:
            # With the chain: it must end in one of the resolved tenant's CAs (FOREIGN_CA,
            # alert unknown_ca, otherwise).
            identity = self._credentials.cached_cert(fp, chain)
        except IngressError as exc:
            peer.refusal = (exc.cause, "certificate")
            return False
        if identity is None:
            peer.refusal = (Cause.UNAVAILABLE, "certificate not vouched for by the resolver cache")
            return False
        peer.credential = Credential(CredentialKind.X509, fp, identity, chain)
        return True

    # -- established -----------------------------------------------------------------------
    def _application_datagram(self, peer: _Peer, data: bytes) -> None:
        peer.conn.bio_write(data)
        # One SSL_read per record at most: saves the WantReadError after the last one.
        self._read_application(peer, max_reads=max(1, len(split_records(data))))

    def _read_application(self, peer: _Peer, max_reads: int = 1_000) -> None:
        for _ in range(max_reads):
            if peer.addr not in self._peers:
                return
            try:
                data = peer.conn.recv(_READ_CHUNK)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                # The client's close_notify: answer it and free the session at once.
                with contextlib.suppress(SSL.Error):
                    peer.conn.shutdown()
                self._flush(peer)
                self._drop(peer, Cause.PEER_CLOSED, "close_notify")
                return
            except SSL.Error as exc:
                self._flush(peer)
                self._drop(peer, Cause.PROTOCOL_ERROR, _ssl_reason(exc))
                return
            self._events.append(ApplicationData(peer.addr, data))
        self._flush(peer)

    # -- output and teardown ---------------------------------------------------------------
    def _flush(self, peer: _Peer) -> None:
        chunk = self._send_raw(peer.conn, peer.addr)
        if peer.suite is None and chunk:
            peer.suite = server_hello_suite(chunk)

    def _send_raw(self, conn: SSL.Connection, addr: Address) -> bytes:
        mtu = self.config.mtu - 28
        sent = b""
        while True:
            try:
                chunk = conn.bio_read(_READ_CHUNK)
            except SSL.WantReadError:
                return sent
            if not chunk:
                return sent
            sent = chunk
            self._out.extend((d, addr) for d in pack_datagrams(chunk, mtu))
            if len(chunk) < _READ_CHUNK:  # a memory BIO hands out all it has
                return sent

    def _drop(self, peer: _Peer, cause: Cause, detail: str = "") -> None:
        if self._peers.get(peer.addr) is not peer:
            return
        del self._peers[peer.addr]
        self._pending.pop(peer.addr, None)
        established = peer.state is PeerState.ESTABLISHED
        peer.conn.set_app_data(None)
        peer.held.clear()
        self.stats["closed:" + cause.label] += 1
        self._events.append(SessionClosed(peer.addr, cause, established, detail))


def _ssl_reason(exc: SSL.Error) -> str:
    try:
        return str(exc.args[0][0][2])
    except (IndexError, TypeError):
        return type(exc).__name__
