"""The DTLS 1.2 server core: PSK and X.509 on one UDP port, no I/O.

Driven like aioquic's connection: ``receive_datagram(data, addr, now)``,
``handle_timer(now)``, and calls from the user (``send``, ``close``,
``credential_resolved``, ``keep_alive``). Output is drained with
``datagrams_to_send()`` (whole DTLS records, each datagram within the MTU) and events
with ``next_event()``.

* No state before a valid cookie: a ClientHello without one is answered with a
  HelloVerifyRequest by one shared listening SSL object (``DTLSv1_listen``) and
  forgotten. Only a ClientHello carrying a cookie we minted for that address (within
  the per-source handshake rate and the caps on pending handshakes, per source address
  and in total) gets a per-peer SSL object.
* A new connection from an address that has state (a device that rebooted, RFC 6347
  4.2.8): a ClientHello with a valid cookie and a new random starts a new handshake; a
  half-done one at that address is dropped, an established session is kept until the
  new handshake completes, then replaced.
* Suites: a client that offers PSK suites gets one (it has a key; it may well have no
  certificate); otherwise ECDHE-ECDSA with a client certificate.
* Credentials: OpenSSL asks for the PSK / verifies the leaf synchronously, so
  before OpenSSL sees the client's second flight we peek at its plaintext
  Certificate / ClientKeyExchange. If the resolver's cache cannot vouch for that
  credential, the datagram is *held*, a ``CredentialNeeded`` event asks the user
  to resolve it (async, fills the cache), and ``credential_resolved`` feeds the
  held datagrams to OpenSSL. The callbacks then decide from the cache alone: a
  cache that still cannot vouch (Redis down) refuses — fail closed. A refusal the
  broker's policy decides is told to the client with that cause's alert.
* A wrong key: OpenSSL drops an epoch-1 record whose AEAD tag fails without a word, so
  the client's Finished simply never arrives. Once the client's whole second flight has
  been fed (every message, however fragmented, split or reordered: ``HandshakePeek``)
  and the handshake is still not complete, the Finished did not verify: a fatal
  decrypt_error alert, and the failure counts against the source.
* Timers live in heaps (``timers.TimerHeap``): the handshake deadline and the idle
  deadline on the ``now`` clock, OpenSSL's flight retransmission (``DTLSv1_get_timeout``
  / ``DTLSv1_handle_timeout``, 1 s doubling) on the real clock it runs on. No datagram
  and no timer walks all peers.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from OpenSSL import SSL, crypto

from corem_ingress.adapters.dtls import _binding, cid, resume
from corem_ingress.adapters.dtls.authn import Authenticator, CredentialCache
from corem_ingress.adapters.dtls.cid_session import MAX_BACKLOG, CidSession
from corem_ingress.adapters.dtls.cookies import CookieJar
from corem_ingress.adapters.dtls.events import (
    Address,
    ApplicationData,
    Credential,
    CredentialNeeded,
    DtlsEvent,
    HandshakeCompleted,
    SessionClosed,
    SessionIssued,
    SessionLookup,
)
from corem_ingress.adapters.dtls.peer import Peer, PeerState
from corem_ingress.adapters.dtls.ratelimit import RateLimiter
from corem_ingress.adapters.dtls.records import (
    CT_ALERT,
    CT_APPLICATION_DATA,
    CT_CHANGE_CIPHER_SPEC,
    CT_HANDSHAKE,
    PSK_SUITES,
    RECORD_HEADER,
    ClientHello,
    HandshakePeek,
    aead_overhead,
    alert_name,
    alert_record,
    fatal_alert,
    pack_records,
    parse_client_hello,
    server_hello_suite,
    split_records,
    with_alert_description,
)
from corem_ingress.adapters.dtls.timers import TimerHeap
from corem_ingress.core.causes import Cause
from corem_ingress.core.dtls_resumption import StoredSession

#: Offered to a client that offers a PSK suite (the client's preference among them).
PSK_CIPHERS = (
    "PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-AES128-CCM8:PSK-AES128-CCM:@SECLEVEL=0"
)
#: Explicit list: the CoAP/LwM2M mandatory CCM8 suites and GCM suites. The CCM8 suites need
#: @SECLEVEL=0 with OpenSSL 3+; nothing weaker is listed. Offered to clients that offer no
#: PSK suite (see ``_context_for``).
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-CCM:"
    "PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-AES128-CCM8:PSK-AES128-CCM:"
    "@SECLEVEL=0"
)

_MAX_HELD = 32
#: What an established peer keeps instead of its handshake's peek (never fed again:
#: a new handshake from the address is a new Peer).
_SPENT_PEEK = HandshakePeek()
_READ_CHUNK = 65_536
#: Timer kinds: on the ``now`` clock, and OpenSSL's retransmission on the real clock.
_HANDSHAKE, _IDLE, _RETRANSMIT = "handshake", "idle", "retransmit"


@dataclass
class DtlsConfig:
    """Limits of the DTLS server (from ``CoapConfig``)."""

    #: Link MTU: every datagram we send carries whole records within this size.
    mtu: int = 1280
    #: A handshake must finish within this many seconds, else its state is dropped.
    handshake_timeout: float = 10.0
    #: An established session with no datagram from the peer for this long is closed
    #: (unless ``keep_alive`` keeps it longer).
    idle_timeout: float = 300.0
    #: Handshaking + established peers; beyond it new handshakes are ignored.
    max_sessions: int = 10_000
    #: Handshakes per second per source IP (token bucket), and its burst.
    handshake_rate: float = 10.0
    handshake_burst: float = 20.0
    #: Handshakes in progress (cookie verified, not complete) at once; beyond it a new
    #: one is ignored until one finishes or times out.
    max_pending: int = 1_000
    #: Handshakes in progress from one source IP at once (0: no per-source cap).
    max_pending_per_source: int = 20
    #: How long a cookie stays valid (it is checked for this and the previous period).
    cookie_lifetime: float = 60.0
    #: Certificates are checked against this clock (seconds since the epoch).
    check_cert_validity: bool = True
    #: Answer a client's RFC 9146 ``connection_id`` extension (NAT rebinding survives).
    cid_enabled: bool = True
    #: Length of the CIDs we issue, what clients put in their records (0: we ask for none
    #: but still send the client's CID in our records when it asks for one).
    cid_length: int = 8
    #: The first bytes of every CID we issue: which node owns the session.
    node_tag: bytes = b"\x00\x00"
    #: Session resumption (RFC 5246 session ids): full handshakes issue a session id
    #: (``SessionIssued``), a ClientHello naming one is looked up (``SessionLookup``) and
    #: resumed by our own abbreviated handshake (``resume.py``).
    resumption: bool = False
    #: Once a full handshake completes, let its OpenSSL object go and carry the session on
    #: our record layer (``CidSession``: keys from the master secret, sequence numbers where
    #: OpenSSL left them): memory per idle session.
    detach_openssl: bool = True


class DtlsServer:
    def __init__(
        self,
        *,
        cert_file: str | None,
        key_file: str | None,
        ca_files: list[str],
        credentials: CredentialCache,
        config: DtlsConfig | None = None,
        real_clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        _binding.check_binding()
        self.config = config or DtlsConfig()
        # ``now`` (timers, cookies) is a monotonic clock; a certificate's validity is dates.
        self._auth = Authenticator(
            credentials,
            clock=wall_clock,
            check_cert_validity=self.config.check_cert_validity,
        )
        self._cookies = CookieJar(lifetime=self.config.cookie_lifetime)
        self._rate = RateLimiter(self.config.handshake_rate, self.config.handshake_burst)
        self._ctx = self._make_context(cert_file, key_file, ca_files, CIPHERS)
        self._psk_ctx = self._make_context(cert_file, key_file, ca_files, PSK_CIPHERS)
        #: The current peer of each address (handshaking or established).
        self._peers: dict[Address, Peer] = {}
        #: A new handshake from an address whose session is established (RFC 6347 4.2.8):
        #: it takes the address when it completes.
        self._successors: dict[Address, Peer] = {}
        #: Every live peer by id (timer entries name peers by id only).
        self._by_id: dict[int, Peer] = {}
        #: Handshakes in progress, oldest first, and their count per source IP.
        self._pending: dict[Peer, None] = {}
        self._pending_by_source: collections.Counter[str] = collections.Counter()
        self._ids = itertools.count(1)
        #: Handshake and idle deadlines (``now`` clock); retransmissions (real clock).
        self._timers: TimerHeap[int] = TimerHeap()
        self._retransmits: TimerHeap[int] = TimerHeap()
        self._real_clock = real_clock
        self._listener: SSL.Connection | None = None
        self._listen_addr: Address = ("", 0)
        self._checked_cookie: bytes | None = None
        self._now = 0.0
        self._out: list[tuple[bytes, Address]] = []
        self._events: collections.deque[DtlsEvent] = collections.deque()
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
        #: Told when a handshake with a valid cookie is refused by a pending-handshake cap.
        self.on_pending_refused: Callable[[Address], None] | None = None
        #: Sessions by the CID we issued them (RFC 9146).
        self._by_cid: dict[bytes, Peer] = {}
        #: Told (session address, old, new) when an authenticated CID record moved a session.
        self.on_address_changed: Callable[[Address, Address, Address], None] | None = None
        #: A CID record for a session another node issued: (datagram, source, CID) to
        #: forward it there; None drops it.
        self.forward_cid: Callable[[bytes, Address, bytes], None] | None = None
        #: (device address, datagram) -> the frame that another node sends on to the device
        #: (cross-node CID); set with ``forward_cid``.
        self.wrap_back: Callable[[Address, bytes], bytes] | None = None
        #: The node that forwarded the datagram being received (None: straight from it).
        self._via: Address | None = None
        #: Told the outcome of each ClientHello that named a session (metrics).
        self.on_resumption: Callable[[str], None] | None = None

    # -- setup ----------------------------------------------------------------------------
    def _make_context(
        self, cert_file: str | None, key_file: str | None, ca_files: list[str], ciphers: str
    ) -> SSL.Context:
        ctx = SSL.Context(SSL.DTLS_SERVER_METHOD)
        ctx.set_min_proto_version(_binding.DTLS1_2_VERSION)
        ctx.set_max_proto_version(_binding.DTLS1_2_VERSION)
        ctx.set_cipher_list(ciphers.encode())
        ctx.set_options(
            SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
        )
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        if self.config.resumption:
            # OpenSSL puts a session id in its ServerHello but never stores nor looks one
            # up: resumption is ours (SessionLookup), shared by the nodes.
            ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER | SSL.SESS_CACHE_NO_INTERNAL)
            ctx.set_session_id(b"corem-dtls")
        else:
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        if cert_file and key_file:
            ctx.use_certificate_chain_file(cert_file)
            ctx.use_privatekey_file(key_file)
            ctx.check_privatekey()
        for ca in ca_files:
            ctx.load_verify_locations(ca)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._auth.verify)
        ctx.set_cookie_generate_callback(self._cookie_generate)
        ctx.set_cookie_verify_callback(self._cookie_verify)
        _binding.set_psk_server_callback(ctx, self._auth.psk)
        if self.config.cid_enabled:
            _binding.add_server_extension(
                ctx, cid.EXT_CONNECTION_ID, self._cid_parse, self._cid_answer
            )
        return ctx

    # -- user API --------------------------------------------------------------------------
    def __len__(self) -> int:
        """Peers with state: handshaking (new connections included) and established."""
        return len(self._by_id)

    @property
    def pending_handshakes(self) -> int:
        return len(self._pending)

    def established(self) -> list[Address]:
        return [a for a, p in self._peers.items() if p.state is PeerState.ESTABLISHED]

    def credential_of(self, addr: Address) -> Credential | None:
        peer = self._peers.get(addr)
        return None if peer is None else peer.credential

    def peer_certificate(self, addr: Address) -> bytes | None:
        """The certificate (DER) an established peer authenticated with, if any (read from
        the connection when asked: sessions keep no copy)."""
        peer = self._peers.get(addr)
        if peer is None or peer.state is not PeerState.ESTABLISHED:
            return None
        if peer.conn is None:  # detached or resumed: the certificate was kept
            return peer.certificate_der
        cert = peer.conn.get_peer_certificate()
        return None if cert is None else crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)

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
        if peer.cid is not None:
            self._emit(peer, peer.cid.protect(CT_APPLICATION_DATA, data))
            return True
        assert peer.conn is not None  # only resumed sessions have none, and they have cid
        try:
            peer.conn.send(data)
        except SSL.Error:
            self._drop(peer, Cause.TRANSPORT_ERROR, "write failed")
            return False
        self._flush(peer)
        return True

    def close(self, addr: Address, cause: Cause = Cause.CLOSED_BY_SERVER) -> bool:
        """Send close_notify and forget the session at once (a new handshake from the same
        address, if one is in progress, goes on)."""
        peer = self._peers.get(addr)
        if peer is None:
            return False
        self._close_peer(peer, cause)
        return True

    def keep_alive(self, addr: Address, until: float) -> bool:
        """Do not close the established session at ``addr`` as idle before ``until`` (on the
        ``now`` clock), however long its peer stays silent: the LwM2M server keeps a
        registered device's session for as long as its registration lives. Each call sets
        the time (``until`` 0 gives the session back to the idle timeout). False if there
        is no established session at ``addr``. A new connection that replaces the session
        starts without it."""
        peer = self._peers.get(addr)
        if peer is None or peer.state is not PeerState.ESTABLISHED:
            return False
        peer.keep_until = until
        self._timers.set(peer.id, _IDLE, self._idle_deadline(peer))  # earlier or later
        return True

    def credential_resolved(self, addr: Address, now: float) -> None:
        """The async lookup asked for by CredentialNeeded is done (whatever its outcome)."""
        self._now = now
        for peer in (self._successors.get(addr), self._peers.get(addr)):
            if peer is None or peer.state is not PeerState.AWAITING_CREDENTIAL:
                continue
            peer.state = PeerState.HANDSHAKE
            held, peer.held = peer.held, []
            for data in held:
                if not self._alive(peer):
                    break
                if peer.state is PeerState.HANDSHAKE:
                    self._handshake_datagram(peer, data)
                else:  # an earlier one completed it: the rest are retransmissions
                    self._peer_datagram(peer, data)

    # -- input -----------------------------------------------------------------------------
    def receive_datagram(
        self, data: bytes, addr: Address, now: float, *, via: Address | None = None
    ) -> None:
        """``via``: the node that forwarded this device datagram (only CID records are)."""
        self._now = now
        if via is not None:
            if data[:1] == b"\x19" and self.config.cid_enabled:
                self._via = via
                try:
                    self._cid_datagram(data, addr)
                finally:
                    self._via = None
            return
        if data[:1] == b"\x19" and self.config.cid_enabled:  # tls12_cid
            self._cid_datagram(data, addr)
            return
        hello = parse_client_hello(data)
        if hello is not None:
            self._client_hello(data, addr, hello)
            return
        peer = self._peers.get(addr)
        if peer is None:
            self.stats["dropped_no_session"] += 1
            return
        successor = self._successors.get(addr)
        if successor is not None:
            self._split_for_successor(peer, successor, data)
            return
        self._peer_datagram(peer, data)

    def _peer_datagram(self, peer: Peer, data: bytes) -> None:
        peer.last_seen = self._now
        if peer.state is PeerState.ESTABLISHED:
            self._application_datagram(peer, data)
        elif peer.state is PeerState.AWAITING_CREDENTIAL:
            if len(peer.held) < _MAX_HELD:
                peer.held.append(data)
        elif peer.state is PeerState.AWAITING_SESSION:
            pass  # its ClientHello again, while the session is looked up
        else:
            self._handshake_datagram(peer, data)

    def _client_hello(self, data: bytes, addr: Address, hello: ClientHello) -> None:
        current = self._peers.get(addr)
        for peer in (self._successors.get(addr), current):
            if peer is None or peer.client_random != hello.random:
                continue
            if peer.state is PeerState.ESTABLISHED:
                # The ClientHello that opened this session, again (late or replayed).
                self.stats["dropped_old_hello"] += 1
                return
            if hello.cookie:
                # The client retransmits its ClientHello: our flight was lost. OpenSSL
                # answers it by retransmitting that flight.
                self._peer_datagram(peer, data)
                return
        if self.source_blocked is not None and self.source_blocked(addr[0]):
            self.stats["dropped_throttled"] += 1
            return
        self._stateless(data, addr, hello)

    def _split_for_successor(self, current: Peer, successor: Peer, data: bytes) -> None:
        """While a new handshake runs beside an established session at one address, its
        records (epoch 0, ChangeCipherSpec, the encrypted Finished) go to the new handshake
        and application data to the session; once the new handshake completes it is the
        session."""
        new, old = bytearray(), bytearray()
        for rec in split_records(data):
            to_new = rec.epoch == 0 or rec.content_type in (CT_CHANGE_CIPHER_SPEC, CT_HANDSHAKE)
            if rec.content_type == CT_ALERT and successor.peek.change_cipher_spec:
                to_new = True
            (new if to_new else old).extend(rec.raw)
        if new:
            self._peer_datagram(successor, bytes(new))
        if old:
            peer = self._peers.get(current.addr)
            if peer is not None:
                self._peer_datagram(peer, bytes(old))

    def handle_timer(self, now: float) -> None:
        self._now = now
        for peer_id, kind in self._timers.pop_due(now):
            peer = self._by_id.get(peer_id)
            if peer is None:
                continue
            if kind == _HANDSHAKE:
                self._drop(peer, Cause.HANDSHAKE_TIMEOUT)
                continue
            deadline = self._idle_deadline(peer)
            if deadline <= now:
                self._close_peer(peer, Cause.IDLE)
            else:
                self._timers.set(peer.id, _IDLE, deadline)
        for peer_id, _kind in self._retransmits.pop_due(self._real_clock()):
            peer = self._by_id.get(peer_id)
            if peer is None or peer.state is not PeerState.HANDSHAKE:
                continue
            if peer.conn is None:
                self._send_resumed(peer, timer=True)
                continue
            timeout = peer.conn.DTLSv1_get_timeout()
            if timeout is not None and timeout <= 0:
                try:
                    peer.conn.DTLSv1_handle_timeout()
                except SSL.Error as exc:
                    self._drop(peer, Cause.HANDSHAKE_FAILED, _ssl_reason(exc))
                    continue
            self._flush(peer)  # the retransmitted flight; re-arms the timer

    @property
    def sweep_interval(self) -> float:
        """Idle deadlines are rounded up to a multiple of this, so that one timer wake-up
        closes every session that went idle within it."""
        return max(0.05, min(5.0, self.config.idle_timeout / 4))

    @property
    def timer_changes(self) -> int:
        """Grows whenever a deadline is set, cancelled or expires: while it stands still,
        ``next_timer`` is where it was (the transport keeps its timer)."""
        return self._timers.changes + self._retransmits.changes

    def next_timer(self, now: float) -> float | None:
        """When ``handle_timer`` should next run (absolute, on the ``now`` clock)."""
        best = self._timers.next_deadline()
        retransmit = self._retransmits.next_deadline()
        if retransmit is not None:
            at = now + max(0.0, retransmit - self._real_clock())
            best = at if best is None else min(best, at)
        return best

    def _idle_deadline(self, peer: Peer) -> float:
        grain = self.sweep_interval
        deadline = peer.last_seen + self.config.idle_timeout
        return max(math.ceil(deadline / grain) * grain, peer.keep_until)

    # -- stateless part --------------------------------------------------------------------
    def _stateless(self, data: bytes, addr: Address, hello: ClientHello) -> None:
        valid = bool(hello.cookie) and self._cookies.check(addr, hello.cookie, self._now)
        # OpenSSL's verify callback asks again for the same hello: answer from this check.
        self._checked_cookie = hello.cookie if valid else None
        self._listen_addr = addr
        if not valid:
            self._hello_verify(data, addr)
            return
        current = self._peers.get(addr)
        established = current if current and current.state is PeerState.ESTABLISHED else None
        # A half-done handshake at this address that this new connection replaces.
        replaced = self._successors.get(addr) if established else current
        if current is None and len(self._peers) >= self.config.max_sessions:
            self.stats["refused_max_sessions"] += 1
            if self.on_max_sessions is not None:
                self.on_max_sessions(addr)
            return
        if not self._rate.allow(addr[0], self._now):
            self.stats["refused_rate"] += 1
            if self.on_rate_limited is not None:
                self.on_rate_limited(addr)
            return
        if self._pending_full(addr[0], replaced):
            if self.on_pending_refused is not None:
                self.on_pending_refused(addr)
            return
        # A ClientHello naming a session: looked up first (SessionLookup), OpenSSL only if
        # it is not resumed.
        lookup = self.config.resumption and bool(hello.session_id)
        conn = None if lookup else self._listen(data, hello, addr)
        if conn is None and not lookup:
            return
        if replaced is not None:
            self._drop(replaced, Cause.REPLACED)
        peer = Peer(next(self._ids), addr, conn, self._now, self._now, hello.random)
        if conn is not None:
            conn.set_app_data(peer)
        if self.config.resumption:
            parsed = resume.parse_hello(data)
            peer.offered_ems = parsed is not None and (
                resume.EXT_EXTENDED_MASTER_SECRET in parsed.extensions
            )
        if established is not None:
            self._successors[addr] = peer
        else:
            self._peers[addr] = peer
        self._by_id[peer.id] = peer
        self._pending[peer] = None
        self._pending_by_source[addr[0]] += 1
        self._timers.set(peer.id, _HANDSHAKE, self._now + self.config.handshake_timeout)
        self.stats["handshakes_started"] += 1
        if self.on_handshake_started is not None:
            self.on_handshake_started(addr)
        if conn is None:
            peer.state = PeerState.AWAITING_SESSION
            peer.resume_id = hello.session_id
            peer.held.append(data)
            self._events.append(SessionLookup(addr, hello.session_id))
            return
        self._advance(peer)

    def _listen(self, data: bytes, hello: ClientHello, addr: Address) -> SSL.Connection | None:
        """A per-peer SSL object that has read the (cookie-checked) ClientHello."""
        self._checked_cookie = hello.cookie
        self._listen_addr = addr
        conn = self._new_connection(self._context_for(hello))
        conn.bio_write(data)
        try:
            conn.DTLSv1_listen()
        except SSL.Error:
            self.stats["dropped_bad_hello"] += 1
            return None
        return conn

    # -- session resumption (our abbreviated handshake, resume.py) ----------------------------
    def session_found(
        self,
        addr: Address,
        session_id: bytes,
        stored: StoredSession | None,
        now: float,
    ) -> Cause | None:
        """The lookup asked for by ``SessionLookup`` is done: ``stored`` None (expired,
        unknown, another cluster's) runs OpenSSL's full handshake, which issues a new id.
        Otherwise the credential is re-checked from the resolver's cache (filled by the
        caller) BEFORE anything is sent. -> the cause when the resumption was refused (the
        caller deletes the stored session), else None."""
        self._now = now
        peer = next(
            (
                p
                for p in (self._successors.get(addr), self._peers.get(addr))
                if p is not None
                and p.state is PeerState.AWAITING_SESSION
                and p.resume_id == session_id
            ),
            None,
        )
        if peer is None:
            return None
        data = peer.held[0]
        peer.held.clear()
        hello = resume.parse_hello(data)
        refusal = None
        if stored is not None and hello is not None:
            refusal = resume.check_hello(hello, stored)
        if stored is None or hello is None or refusal is resume.Refusal.FULL_HANDSHAKE:
            self._resumption("full_handshake")
            self._full_handshake(peer, data)
            return None
        if refusal is resume.Refusal.ABORT:  # RFC 7627 5.3
            detail = "the session used the extended master secret, the new hello does not"
            return self._refuse_resumption(peer, Cause.HANDSHAKE_FAILED, detail)
        checked = self._auth.recheck(peer, stored)
        if not isinstance(checked, Credential):
            return self._refuse_resumption(peer, *checked)
        peer.credential = checked
        peer.certificate_der = stored.certificate or None
        session = CidSession(peer_cid=b"")
        answer = None
        offered = hello.extensions.get(cid.EXT_CONNECTION_ID)
        if offered is not None and self.config.cid_enabled:
            value = cid.parse_cid_extension(offered)
            if value is None:
                return self._refuse_resumption(peer, Cause.MALFORMED, "bad connection_id")
            own = self._issue_cid()
            session = CidSession(peer_cid=value, own_cid=own)
            answer = cid.cid_extension(own)
            if own:
                self._by_cid[own] = peer
            self.stats["cid_negotiated"] += 1
        peer.cid = session
        peer.suite = stored.suite
        peer.resumed = resume.ResumedHandshake(hello, stored, os.urandom(32), session, answer)
        peer.state = PeerState.HANDSHAKE
        self.stats["resumptions_started"] += 1
        self._send_resumed(peer)
        return None

    def _resumption(self, outcome: str) -> None:
        """resumed, full_handshake, refused, finished_failed."""
        self.stats["resumptions_" + outcome] += 1
        if self.on_resumption is not None:
            self.on_resumption(outcome)

    def _full_handshake(self, peer: Peer, data: bytes) -> None:
        hello = parse_client_hello(data)
        conn = None if hello is None else self._listen(data, hello, peer.addr)
        if conn is None:
            self._drop(peer, Cause.MALFORMED, "a ClientHello OpenSSL could not read")
            return
        peer.conn = conn
        conn.set_app_data(peer)
        peer.state = PeerState.HANDSHAKE
        self._advance(peer)

    def _refuse_resumption(self, peer: Peer, cause: Cause, detail: str) -> Cause:
        """Fail closed: the cause's alert (plaintext, nothing of ours sent before it)."""
        alert = cause.dtls_alert
        self._out.append((alert_record(alert), peer.destination))
        self._resumption("refused")
        self._drop(peer, cause, f"resumption refused: {detail}; sent {alert_name(alert)}")
        return cause

    def _send_resumed(self, peer: Peer, *, timer: bool = False) -> None:
        """Our flight (again: the client's ClientHello again, or our retransmission timer,
        1 s doubling)."""
        handshake = peer.resumed
        assert handshake is not None
        if timer:
            handshake.retransmits += 1
            if handshake.retransmits > resume.MAX_RETRANSMITS:
                self._drop(peer, Cause.HANDSHAKE_TIMEOUT, "no Finished for our resumed flight")
                return
        for datagram in pack_records(handshake.flight, self.config.mtu - 28):
            self._out.append((datagram, peer.destination))
        delay = float(min(60, 2**handshake.retransmits))
        self._retransmits.set(peer.id, _RETRANSMIT, self._real_clock() + delay)

    def _resumed_datagram(self, peer: Peer, data: bytes) -> None:
        """The client's ChangeCipherSpec + Finished (or its ClientHello again)."""
        handshake, state = peer.resumed, peer.cid
        assert handshake is not None and state is not None
        records = cid.split(data, len(state.own_cid))
        for i, rec in enumerate(records):
            if rec[3:5] == b"\0\0":
                if rec[0] == CT_HANDSHAKE:  # its ClientHello again: our flight was lost
                    self._send_resumed(peer)
                continue
            outcome = handshake.receive(rec)
            if outcome is resume.Outcome.FAILED:
                self._resumption("finished_failed")
                alert = Cause.WRONG_KEY.dtls_alert
                self._out.append((alert_record(alert), peer.destination))
                detail = "the client's Finished of a resumed session did not verify"
                self._drop(peer, Cause.WRONG_KEY, f"{detail}; sent {alert_name(alert)}")
                return
            if outcome is resume.Outcome.DONE:
                state.last_flight = pack_records(handshake.flight[2:], self.config.mtu - 28)
                peer.resumed = None
                self._resumption("resumed")
                self._completed(peer)
                rest = b"".join(records[i + 1 :])
                if rest and self._alive(peer):
                    self._cid_established(peer, rest, peer.destination)
                return

    def _hello_verify(self, data: bytes, addr: Address) -> None:
        """A ClientHello without a valid cookie: a HelloVerifyRequest, nothing kept."""
        listener = self._listener
        if listener is None:
            listener = self._listener = self._new_connection(self._ctx)
        listener.bio_write(data)
        try:
            listener.DTLSv1_listen()
        except SSL.WantReadError:
            self._send_raw(listener, addr)  # the HelloVerifyRequest, if any
            self.stats["hello_verify"] += 1
            return
        except SSL.Error:
            self.stats["dropped_bad_hello"] += 1
        # Garbage, or (cannot happen) a cookie OpenSSL accepted where we did not: never
        # reuse an SSL object in an unknown state.
        self._listener = None

    def _pending_full(self, source: str, replaced: Peer | None) -> bool:
        cfg = self.config
        freed = 1 if replaced is not None else 0
        per_source = cfg.max_pending_per_source
        if per_source and self._pending_by_source[source] - freed >= per_source:
            self.stats["refused_pending_source"] += 1
            return True
        if len(self._pending) - freed >= cfg.max_pending:
            self.stats["refused_pending_total"] += 1
            return True
        return False

    def _context_for(self, hello: ClientHello) -> SSL.Context:
        """A client that offers PSK suites has a key (OpenSSL, GnuTLS and mbedTLS clients
        offer them only then) and may have no certificate: it gets a PSK suite."""
        if any(s in PSK_SUITES for s in hello.suites):
            return self._psk_ctx
        return self._ctx

    def _new_connection(self, ctx: SSL.Context) -> SSL.Connection:
        conn = SSL.Connection(ctx, None)
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
    def _handshake_datagram(self, peer: Peer, data: bytes) -> None:
        if peer.resumed is not None:
            self._resumed_datagram(peer, data)
            return
        state = peer.cid
        if state is None or not state.own_cid:
            self._feed_handshake(peer, data)
            return
        # The client's epoch-1 records carry our CID: OpenSSL gets them re-protected as
        # plain records once the keys exist (after the ClientKeyExchange).
        plain = bytearray()
        for rec in cid.split(data, len(state.own_cid)):
            if rec[0] != cid.CT_TLS12_CID:
                plain += rec
            elif len(state.backlog) < MAX_BACKLOG:
                state.backlog.append(rec)
        if plain:
            self._feed_handshake(peer, bytes(plain))
        self._cid_feed_backlog(peer)

    def _feed_handshake(self, peer: Peer, data: bytes) -> None:
        needed = self._auth.needed(peer, data)
        if needed is not None:
            peer.state = PeerState.AWAITING_CREDENTIAL
            peer.held.append(data)
            peer.looked_up.add(needed)
            der = peer.peek.certificate_der  # used for certificates only (JITP)
            self._events.append(CredentialNeeded(peer.addr, needed[0], needed[1], der))
            return
        alert = fatal_alert(data)
        if alert is not None:
            peer.client_alert = alert
        assert peer.conn is not None
        peer.conn.bio_write(data)
        self._advance(peer)
        if peer.state is PeerState.HANDSHAKE and self._alive(peer):
            self._judge_flight(peer)

    def _judge_flight(self, peer: Peer) -> None:
        """The client's whole second flight has been fed and the handshake is still not
        complete: OpenSSL dropped its Finished, whose AEAD tag did not verify (the client
        derived other keys: a wrong PSK). Refuse now with a fatal alert rather than wait
        for the handshake timeout."""
        overhead = aead_overhead(peer.suite)
        if overhead is None or not peer.peek.flight_complete(overhead):
            return
        cause, detail = peer.refusal or (
            Cause.WRONG_KEY,
            "the client's Finished did not verify: it holds another key",
        )
        self._out.append((alert_record(cause.dtls_alert), peer.destination))
        self._drop(peer, cause, f"{detail}; sent {alert_name(cause.dtls_alert)}")

    def _advance(self, peer: Peer) -> None:
        assert peer.conn is not None
        try:
            peer.conn.do_handshake()
        except SSL.WantReadError:
            self._flush(peer)
            return
        except SSL.Error as exc:
            sent = self._flush(peer, alert=peer.alert)  # the alert (ours where our policy refused)
            cause, detail = self._failure(peer, exc)
            told = fatal_alert(sent)
            if told is not None:
                detail += f"; sent {alert_name(told)}"
            self._drop(peer, cause, detail)
            return
        self._flush(peer)
        if peer.credential is None:
            # Cannot happen with VERIFY_FAIL_IF_NO_PEER_CERT and the PSK callback, but
            # never keep an unauthenticated session.
            self._close_peer(peer, Cause.NO_CREDENTIAL)
            return
        self._completed(peer)

    def _completed(self, peer: Peer) -> None:
        addr = peer.addr
        peer.state = PeerState.ESTABLISHED
        self._unpend(peer)
        self._timers.cancel(peer.id, _HANDSHAKE)
        self._retransmits.cancel(peer.id, _RETRANSMIT)
        if self._successors.get(addr) is peer:
            # RFC 6347 4.2.8: the new connection is complete, it replaces the old session.
            del self._successors[addr]
            old = self._peers.get(addr)
            if old is not None:
                self._close_peer(old, Cause.REPLACED, notify=False)
            self._peers[addr] = peer
        if peer.cid is not None and not (peer.cid.keyed or self._cid_keys(peer)):
            # Cannot happen (the Finished exchange needed the keys), but never run a
            # CID session we could not protect.
            self._close_peer(peer, Cause.HANDSHAKE_FAILED, notify=False)
            return
        if peer.peek.finished_records > 1:
            self.stats["client_finished_split"] += 1  # a flight split mid-Finished, handled
        client_seq = peer.peek.last_encrypted_seq
        peer.held.clear()
        peer.peek = _SPENT_PEEK  # an established session reads no more handshake flights
        peer.looked_up.clear()
        self._timers.set(peer.id, _IDLE, self._idle_deadline(peer))
        self.stats["handshakes_completed"] += 1
        assert peer.credential is not None
        master, der = b"", None
        if peer.conn is None:  # resumed: our own record layer from the start
            cipher = _SUITE_NAMES.get(peer.suite or 0, "")
        else:
            conn = peer.conn
            cipher = conn.get_cipher_name() or ""
            if self.config.resumption or self.config.detach_openssl:
                # Read once from OpenSSL for the stored session and the detach both.
                master = conn.master_key() or b""
                cert = conn.get_peer_certificate()
                if cert is not None:
                    der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
                self._issue_session(peer, master, der)
        self._events.append(HandshakeCompleted(addr, peer.credential, cipher))
        if peer.conn is not None:
            self._read_application(peer)
        if self.config.detach_openssl and peer.conn is not None and self._alive(peer):
            self._detach(peer, client_seq, master, der)

    def _detach(self, peer: Peer, client_seq: int, master: bytes, der: bytes | None) -> None:
        """Let the session's OpenSSL object go: our record layer carries it on, with the
        keys of its master secret, our sequence numbers after OpenSSL's Finished, the
        client's Finished in the replay window, and our last flight to resend if the
        client sends its own again (ours was lost)."""
        conn = peer.conn
        assert conn is not None
        state = peer.cid
        if state is None:
            if peer.next_write_seq == 0:
                return  # OpenSSL's Finished not seen: never risk reusing its nonce
            state = CidSession(peer_cid=b"")
            randoms = (conn.client_random() or b"", conn.server_random() or b"")
            if peer.suite is None or not state.set_keys(peer.suite, master, *randoms):
                return
            state.write_seq = peer.next_write_seq
            if client_seq >= 0:
                state.window.accept(client_seq)
            state.last_flight = peer.last_flight
        if der is not None:
            peer.certificate_der = der
        peer.last_flight = []
        peer.issued = None
        peer.cid = state
        conn.set_app_data(None)
        peer.conn = None
        self.stats["openssl_detached"] += 1

    def _issue_session(self, peer: Peer, master: bytes, der: bytes | None) -> None:
        """A full handshake whose ServerHello carried a session id: report what a later
        resumption needs (stored sealed by the caller, ``SessionIssued``). ``master``, ``der``:
        the session's master secret and the client's certificate (DER), read from OpenSSL."""
        issued, credential = peer.issued, peer.credential
        if not self.config.resumption or issued is None or not issued.session_id:
            return
        assert credential is not None
        if not master or issued.suite not in cid.SUITES:
            return
        ems = resume.EXT_EXTENDED_MASTER_SECRET in issued.extensions
        stored = StoredSession(
            suite=issued.suite,
            master=master,
            extended_master_secret=ems and peer.offered_ems,
            kind=credential.kind.value,
            lookup=credential.lookup,
            chain=credential.chain.issuers if credential.chain is not None else (),
            secret_digest=peer.secret_digest,
            not_after=peer.not_after,
            certificate=der or b"",
        )
        self.stats["sessions_issued"] += 1
        self._events.append(SessionIssued(peer.addr, issued.session_id, stored))

    @staticmethod
    def _failure(peer: Peer, exc: SSL.Error) -> tuple[Cause, str]:
        """Why OpenSSL gave up on this handshake."""
        if peer.refusal is not None:
            return peer.refusal
        if peer.client_alert is not None:
            return Cause.PEER_ABORTED, f"the client sent a fatal {alert_name(peer.client_alert)}"
        return Cause.HANDSHAKE_FAILED, _ssl_reason(exc)

    # -- established -----------------------------------------------------------------------
    def _application_datagram(self, peer: Peer, data: bytes) -> None:
        if peer.cid is not None:
            self._cid_established(peer, data, peer.addr)
            return
        assert peer.conn is not None  # sessions without one (resumed) carry a CidSession
        peer.conn.bio_write(data)
        # One SSL_read per record at most: saves the WantReadError after the last one. A
        # datagram that is exactly one record (the usual case) is not split to count it.
        single = len(data) == RECORD_HEADER + int.from_bytes(data[11:13], "big")
        self._read_application(peer, max_reads=1 if single else max(1, len(split_records(data))))

    def _read_application(self, peer: Peer, max_reads: int = 1_000) -> None:
        assert peer.conn is not None
        for _ in range(max_reads):
            if not self._alive(peer):
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

    # -- Connection ID (RFC 9146) ----------------------------------------------------------
    def _cid_parse(self, conn: SSL.Connection, data: bytes) -> bool:
        """The client's ``connection_id`` extension: the CID it wants in our records."""
        peer = conn.get_app_data()
        value = cid.parse_cid_extension(data)
        if value is None or not isinstance(peer, Peer):
            return False  # decode_error
        peer.cid = CidSession(peer_cid=value)
        return True

    def _cid_answer(self, conn: SSL.Connection) -> bytes | None:
        """Our ServerHello's ``connection_id``: the CID the client must put in its records."""
        peer = conn.get_app_data()
        if not isinstance(peer, Peer) or peer.cid is None:
            return None
        own = self._issue_cid()
        peer.cid.own_cid = own
        if own:
            self._by_cid[own] = peer
        elif not peer.cid.peer_cid:
            peer.cid = None  # empty both ways: plain records (RFC 9146 3)
        self.stats["cid_negotiated"] += 1
        return cid.cid_extension(own)

    def _issue_cid(self) -> bytes:
        length = self.config.cid_length
        while length:
            own = cid.node_cid(self.config.node_tag, length, os.urandom(length))
            if own not in self._by_cid:
                return own
        return b""

    def _cid_keys(self, peer: Peer) -> bool:
        """Derive the session's epoch-1 keys once OpenSSL has the master secret."""
        assert peer.cid is not None
        if peer.conn is None:
            return peer.cid.keyed
        master = peer.conn.master_key()
        if not master or peer.suite is None:
            return False
        return peer.cid.set_keys(
            peer.suite, master, peer.conn.client_random() or b"", peer.conn.server_random() or b""
        )

    def _cid_feed_backlog(self, peer: Peer) -> None:
        state = peer.cid
        if state is None or not state.backlog or peer.state is not PeerState.HANDSHAKE:
            return
        if not self._alive(peer) or not (state.keyed or self._cid_keys(peer)):
            return
        records, state.backlog = state.backlog, []
        self._feed_handshake(peer, b"".join(state.incoming_for_openssl(r) for r in records))

    def _cid_outgoing(self, peer: Peer, records: list[bytes]) -> list[bytes]:
        """OpenSSL's epoch-1 records (its Finished, an alert) as the client expects them."""
        state = peer.cid
        assert state is not None
        out: list[bytes] = []
        for raw in records:
            if raw[3:5] == b"\0\0" or not (state.keyed or self._cid_keys(peer)):
                out.append(raw)
            else:
                out.append(state.outgoing_from_openssl(raw))
        return out

    def _cid_datagram(self, data: bytes, addr: Address) -> None:
        """A datagram that opens with a ``tls12_cid`` record: found by its CID, wherever
        it comes from."""
        own = cid.record_cid(data, self.config.cid_length) or b""
        peer = self._by_cid.get(own) if own else None
        if peer is None:
            foreign = own[: len(self.config.node_tag)] != self.config.node_tag
            if own and foreign and self.forward_cid is not None and self._via is None:
                self.stats["cid_forwarded"] += 1
                self.forward_cid(data, addr, own)
                return
            self.stats["dropped_unknown_cid"] += 1
            return
        if peer.state is PeerState.ESTABLISHED:
            self._cid_established(peer, data, addr)
        elif addr == peer.destination and self._via is None:
            self._peer_datagram(peer, data)  # the client's Finished
        else:
            self.stats["dropped_no_session"] += 1

    def _cid_established(self, peer: Peer, data: bytes, addr: Address) -> None:
        """Our own record layer for a CID session: only an authenticated record counts,
        and only one newer than every record before it moves the session (RFC 9146 6)."""
        state = peer.cid
        assert state is not None
        resend = False
        for rec in cid.split(data, len(state.own_cid)):
            if rec[3:5] == b"\0\0":
                # The client's epoch-0 flight again: our Finished was lost.
                resend = resend or (rec[0] == CT_HANDSHAKE and addr == peer.destination)
                continue
            result = state.unprotect(rec)
            if result is None:
                self.stats["cid_dropped_records"] += 1
                continue
            opened, newer = result
            if addr != peer.destination or self._via != peer.via:
                if newer:
                    self._cid_move(peer, addr)
                else:  # authentic but reordered: delivered, moves nothing
                    self.stats["cid_stale_elsewhere"] += 1
            peer.last_seen = self._now
            if opened.content_type == CT_APPLICATION_DATA:
                self._events.append(ApplicationData(peer.addr, opened.payload))
            elif opened.content_type == CT_ALERT and len(opened.payload) == 2:
                level, description = opened.payload
                if description == 0:  # close_notify: answer it and forget at once
                    self._emit(peer, state.protect(CT_ALERT, b"\x01\x00"))
                    self._drop(peer, Cause.PEER_CLOSED, "close_notify")
                    return
                if level == 2:
                    detail = f"the client sent a fatal {alert_name(description)}"
                    self._drop(peer, Cause.PEER_ABORTED, detail)
                    return
            elif opened.content_type == CT_HANDSHAKE:
                resend = True  # its Finished again
        if resend and state.last_flight:
            for datagram in state.last_flight:
                self._emit(peer, datagram)

    def _emit(self, peer: Peer, datagram: bytes) -> None:
        """A datagram of an established CID session: to the device, or through the node it
        talks to now."""
        if peer.via is not None and self.wrap_back is not None:
            self._out.append((self.wrap_back(peer.destination, datagram), peer.via))
        else:
            self._out.append((datagram, peer.destination))

    def _cid_move(self, peer: Peer, addr: Address) -> None:
        """To ``addr``, through the node that forwarded the record if one did."""
        old = peer.destination
        peer.remote = None if addr == peer.addr else addr
        peer.via = self._via
        if peer.via is not None:
            self.stats["cid_via_node"] += 1
        if addr == old:
            return  # the same address, now reaching us through another node
        self.stats["cid_address_changes"] += 1
        if self.on_address_changed is not None:
            self.on_address_changed(peer.addr, old, addr)

    # -- output and teardown ---------------------------------------------------------------
    def _flush(self, peer: Peer, alert: int | None = None) -> bytes:
        """Send what OpenSSL wrote (alerts' descriptions replaced by ``alert``); re-arm the
        retransmission timer of a handshake. -> what was sent."""
        assert peer.conn is not None
        if peer.suite is None:
            chunk = self._send_raw(peer.conn, peer.destination, alert)
            peer.suite = server_hello_suite(chunk) if chunk else None
            if chunk and self.config.resumption:
                peer.issued = resume.issued_hello(chunk)
        else:
            chunk = self._send_raw(peer.conn, peer.destination, alert, peer)
        if peer.state is not PeerState.ESTABLISHED and self._alive(peer):
            timeout = peer.conn.DTLSv1_get_timeout()
            if timeout is not None:
                self._retransmits.set(peer.id, _RETRANSMIT, self._real_clock() + timeout)
        return chunk

    def _send_raw(
        self,
        conn: SSL.Connection,
        addr: Address,
        alert: int | None = None,
        peer: Peer | None = None,
    ) -> bytes:
        """Send what OpenSSL wrote; its epoch-1 records re-protected for a CID ``peer``."""
        mtu = self.config.mtu - 28
        sent = b""
        while True:
            try:
                chunk = conn.bio_read(_READ_CHUNK)
            except SSL.WantReadError:
                return sent
            if not chunk:
                return sent
            if alert is not None:
                chunk = with_alert_description(chunk, alert)
            sent = chunk
            # While a handshake that will be detached runs, its last flight is kept (below).
            keep = peer is not None and self.config.detach_openssl
            keep = keep and peer is not None and peer.state is not PeerState.ESTABLISHED
            if len(chunk) <= mtu and (peer is None or peer.cid is None) and not keep:
                # Whole records within one datagram (a response, a short flight): as they are.
                self._out.append((chunk, addr))
                if len(chunk) < _READ_CHUNK:
                    return sent
                continue
            raws = [rec.raw for rec in split_records(chunk)]
            if peer is not None and peer.cid is not None:
                raws = self._cid_outgoing(peer, raws)
            datagrams = pack_records(raws, mtu)
            if peer is not None and any(r[3:5] != b"\0\0" for r in raws):
                if peer.cid is not None:
                    peer.cid.last_flight = datagrams
                elif self.config.detach_openssl:
                    peer.last_flight = datagrams
                    seqs = [int.from_bytes(r[5:11], "big") for r in raws if r[3:5] == b"\0\1"]
                    peer.next_write_seq = max([peer.next_write_seq - 1, *seqs]) + 1
            self._out.extend((d, addr) for d in datagrams)
            if len(chunk) < _READ_CHUNK:  # a memory BIO hands out all it has
                return sent

    def _alive(self, peer: Peer) -> bool:
        return self._by_id.get(peer.id) is peer

    def _unpend(self, peer: Peer) -> None:
        if peer in self._pending:
            del self._pending[peer]
            source = peer.addr[0]
            self._pending_by_source[source] -= 1
            if self._pending_by_source[source] <= 0:
                del self._pending_by_source[source]

    def _close_peer(self, peer: Peer, cause: Cause, *, notify: bool = True) -> None:
        """close_notify (if established) and forget."""
        if peer.state is PeerState.ESTABLISHED and notify and peer.cid is not None:
            self._emit(peer, peer.cid.protect(CT_ALERT, b"\x01\x00"))
        elif peer.state is PeerState.ESTABLISHED and notify and peer.conn is not None:
            with contextlib.suppress(SSL.Error):
                peer.conn.shutdown()
            self._flush(peer)
        self._drop(peer, cause)

    def _drop(self, peer: Peer, cause: Cause, detail: str = "") -> None:
        if self._by_id.pop(peer.id, None) is None:
            return
        addr = peer.addr
        if self._successors.get(addr) is peer:
            del self._successors[addr]
        elif self._peers.get(addr) is peer:
            del self._peers[addr]
            successor = self._successors.pop(addr, None)
            if successor is not None:  # the new connection goes on alone
                self._peers[addr] = successor
        self._unpend(peer)
        if peer.cid is not None and self._by_cid.get(peer.cid.own_cid) is peer:
            del self._by_cid[peer.cid.own_cid]
        self._timers.cancel_all(peer.id, (_HANDSHAKE, _IDLE))
        self._retransmits.cancel(peer.id, _RETRANSMIT)
        established = peer.state is PeerState.ESTABLISHED
        if peer.conn is not None:
            peer.conn.set_app_data(None)
        peer.held.clear()
        self.stats["closed:" + cause.label] += 1
        self._events.append(SessionClosed(addr, cause, established, detail))


#: Suite id -> OpenSSL's name (what ``HandshakeCompleted.cipher`` says of a resumed session).
_SUITE_NAMES = {v: k for k, v in cid.SUITE_IDS.items()}


def _ssl_reason(exc: SSL.Error) -> str:
    """What OpenSSL says went wrong, in words (never a bare exception class name)."""
    if isinstance(exc, SSL.SysCallError):
        code, text = (*exc.args, None, None)[:2]
        if code == -1:
            return "OpenSSL stopped without a reason (unexpected end of the handshake)"
        return f"system error {code}: {text}"
    try:
        reasons = [str(e[2]) for e in exc.args[0] if e[2]]
    except (IndexError, TypeError):
        reasons = []
    if not reasons:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return "; ".join(dict.fromkeys(reasons))
