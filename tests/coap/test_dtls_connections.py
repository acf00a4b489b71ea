"""The DTLS core's connection table, pure (in-process pyOpenSSL clients, the clock passed
in): new connections from an address with state (RFC 6347 4.2.8), the caps on pending
handshakes, the idle deadline and ``keep_alive``, the suite a client gets, the alert a
refusal sends, and the timer heap under it all."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from corem_ingress import devcerts
from corem_ingress.adapters.dtls.events import (
    ApplicationData,
    HandshakeCompleted,
    SessionClosed,
)
from corem_ingress.adapters.dtls.records import alert_record
from corem_ingress.adapters.dtls.server import DtlsServer, _ssl_reason
from corem_ingress.adapters.dtls.timers import TimerHeap
from corem_ingress.core.causes import Cause
from corem_ingress.core.certs import fingerprint_der
from corem_ingress.sim.dtls_client import Client, cert_context, psk_context
from tests.coap.test_dtls_core import (
    KEY,
    NOW,
    FakeCache,
    handshake,
    make_cert_server,
    make_server,
    transfer,
)

pytestmark = pytest.mark.unit

ADDR = ("127.0.0.1", 40200)


def half_done(server: DtlsServer, addr: tuple[str, int], ident: bytes = b"dev1") -> Client:
    """Cookie exchange and the ClientHello with the cookie; the server's flight is lost."""
    client = Client(psk_context(ident, KEY))
    server.receive_datagram(client.start()[0], addr, NOW)
    for d, _ in server.datagrams_to_send():
        client.receive(d)
    server.receive_datagram(client.outgoing()[0], addr, NOW)
    server.datagrams_to_send()
    return client


def kinds(server: DtlsServer) -> list[tuple[str, Cause | None, bool | None]]:
    return [
        (type(e).__name__, getattr(e, "cause", None), getattr(e, "established", None))
        for e in server.events()
    ]


# -- RFC 6347 4.2.8: a new connection from an address with state -------------------------------
def test_a_new_client_hello_replaces_a_stale_half_done_handshake() -> None:
    server = make_server()
    half_done(server, ADDR)  # the device rebooted before finishing
    assert len(server) == 1 and server.pending_handshakes == 1
    client = handshake(server, ADDR)  # same address and port, a new random
    assert client.done
    assert kinds(server) == [
        ("SessionClosed", Cause.REPLACED, False),
        ("HandshakeCompleted", None, None),
    ]
    assert len(server) == 1 and server.pending_handshakes == 0


def test_an_established_session_is_replaced_only_when_the_new_handshake_completes() -> None:
    server = make_server()
    old = handshake(server, ADDR)
    list(server.events())
    new = Client(psk_context(b"dev1", KEY))
    server.receive_datagram(new.start()[0], ADDR, NOW)
    for d, _ in server.datagrams_to_send():
        new.receive(d)
    server.receive_datagram(new.outgoing()[0], ADDR, NOW)  # valid cookie, new random
    for d, _ in server.datagrams_to_send():
        new.receive(d)
    # Mid-handshake: the old session still carries data both ways.
    transfer(server, old, ADDR, old.send(b"still here"))
    assert list(server.events()) == [ApplicationData(ADDR, b"still here")]
    assert server.send(ADDR, b"to the old one")
    for d, _ in server.datagrams_to_send():
        old.receive(d)
    assert old.received[-1] == b"to the old one"
    assert len(server) == 2 and server.pending_handshakes == 1
    # The new handshake completes: it takes the address.
    transfer(server, new, ADDR, new.outgoing())
    assert new.done
    assert kinds(server) == [
        ("SessionClosed", Cause.REPLACED, True),
        ("HandshakeCompleted", None, None),
    ]
    transfer(server, new, ADDR, new.send(b"new"))
    assert list(server.events()) == [ApplicationData(ADDR, b"new")]
    assert len(server) == 1


def test_a_failed_new_handshake_leaves_the_established_session_alone() -> None:
    server = make_server()
    old = handshake(server, ADDR)
    list(server.events())
    wrong = handshake(server, ADDR, key=b"x" * 32)
    assert wrong.failed is not None
    assert kinds(server) == [("SessionClosed", Cause.WRONG_KEY, False)]
    transfer(server, old, ADDR, old.send(b"ok"))
    assert list(server.events()) == [ApplicationData(ADDR, b"ok")]


def test_a_retransmitted_client_hello_is_answered_by_its_own_handshake() -> None:
    server = make_server()
    client = Client(psk_context(b"dev1", KEY))
    server.receive_datagram(client.start()[0], ADDR, NOW)
    for d, _ in server.datagrams_to_send():
        client.receive(d)
    hello = client.outgoing()[0]
    server.receive_datagram(hello, ADDR, NOW)
    server.datagrams_to_send()  # our flight is lost
    server.receive_datagram(hello, ADDR, NOW)  # the client sends its ClientHello again
    assert server.stats["handshakes_started"] == 1 and len(server) == 1
    # Its own handshake retransmits the flight (OpenSSL's timer, 1 s on the real clock).
    for _ in range(60):  # bounded wait
        server.handle_timer(NOW)
        out = server.datagrams_to_send()
        if out:
            break
        time.sleep(0.05)
    for d, _ in out:
        client.receive(d)
    transfer(server, client, ADDR, client.outgoing())
    assert client.done and server.stats["handshakes_completed"] == 1


# -- caps on pending handshakes ----------------------------------------------------------------
def test_pending_handshakes_are_capped_per_source() -> None:
    refused: list[tuple[str, int]] = []
    server = make_server(max_pending_per_source=2, handshake_rate=0.0)
    server.on_pending_refused = refused.append
    half_done(server, ("10.0.0.1", 1))
    half_done(server, ("10.0.0.1", 2))
    half_done(server, ("10.0.0.1", 3))
    assert server.pending_handshakes == 2 and refused == [("10.0.0.1", 3)]
    assert server.stats["refused_pending_source"] == 1
    # Another source is not affected; a completed handshake frees its source's slot.
    assert handshake(server, ("10.0.0.2", 1)).done
    server.handle_timer(NOW + server.config.handshake_timeout)  # the two half-done time out
    assert server.pending_handshakes == 0
    assert handshake(server, ("10.0.0.1", 4)).done


def test_pending_handshakes_are_capped_in_total() -> None:
    server = make_server(max_pending=3, max_pending_per_source=0, handshake_rate=0.0)
    for i in range(4):
        half_done(server, (f"10.0.1.{i}", 1))
    assert server.pending_handshakes == 3 and server.stats["refused_pending_total"] == 1
    # A half-done handshake replaced by a new one from its own address needs no new slot.
    assert handshake(server, ("10.0.1.0", 1)).done
    assert server.pending_handshakes == 2


def test_per_source_cap_zero_means_no_cap() -> None:
    server = make_server(max_pending_per_source=0, handshake_rate=0.0)
    for port in range(30):
        half_done(server, ("10.0.2.1", port))
    assert server.pending_handshakes == 30


# -- idle deadline -----------------------------------------------------------------------------
def test_keep_alive_keeps_a_quiet_session_until_the_given_time() -> None:
    """On the timer heap (tests/coap/test_dtls_keepalive.py has the contract): moving the
    time later, then earlier, reschedules the session's one idle deadline."""
    server = make_server(idle_timeout=20.0)
    handshake(server, ADDR)
    list(server.events())
    assert server.keep_alive(ADDR, NOW + 1000)
    assert server.keep_alive(ADDR, NOW + 100)  # each call sets the time
    assert not server.keep_alive(("127.0.0.1", 1), NOW + 100)  # no such session
    server.handle_timer(NOW + 60)
    assert len(server) == 1
    when = server.next_timer(NOW + 60)
    assert when is not None and when <= NOW + 100
    server.handle_timer(NOW + 100)
    assert list(server.events()) == [SessionClosed(ADDR, Cause.IDLE, True)]


def test_traffic_moves_the_idle_deadline() -> None:
    server = make_server(idle_timeout=20.0)
    client = handshake(server, ADDR)
    list(server.events())
    transfer(server, client, ADDR, client.send(b"x"), now=NOW + 15)
    server.handle_timer(NOW + 25)
    assert len(server) == 1  # 10 s since the last datagram
    server.handle_timer(NOW + 35 + server.sweep_interval)
    assert [e.cause for e in server.events() if isinstance(e, SessionClosed)] == [Cause.IDLE]


# -- suites and alerts -------------------------------------------------------------------------
@pytest.fixture
def cert_server(tmp_path: Path) -> tuple[DtlsServer, FakeCache, Path]:
    ca = devcerts.make_ca("core CA")
    cache = FakeCache()
    server = make_cert_server(tmp_path, ca, cache)
    devcerts.issue(ca, "dev").write(tmp_path / "d.pem", tmp_path / "d.key")
    return server, cache, tmp_path


def test_a_client_offering_psk_and_ecdsa_without_a_certificate_gets_psk(
    cert_server: tuple[DtlsServer, FakeCache, Path],
) -> None:
    """What ``openssl s_client -psk`` offers: ECDHE-ECDSA first, then PSK suites."""
    server, _cache, _dir = cert_server
    ctx = psk_context(b"dev1", KEY, cipher="ECDHE-ECDSA-AES128-GCM-SHA256:PSK-AES128-CCM8")
    client = Client(ctx)
    transfer(server, client, ADDR, client.start(), now=dt.datetime.now(dt.UTC).timestamp())
    assert client.done, client.failed
    (event,) = list(server.events())
    assert isinstance(event, HandshakeCompleted) and event.cipher == "PSK-AES128-CCM8"


@pytest.mark.parametrize(
    ("state", "alert_text", "cause"),
    [
        ("unregistered", "access denied", Cause.UNKNOWN_OR_REVOKED),
        ("revoked", "access denied", Cause.UNKNOWN_OR_REVOKED),
        ("cache cannot vouch", "internal error", Cause.UNAVAILABLE),
    ],
)
def test_a_refused_certificate_gets_the_alert_of_its_cause(
    cert_server: tuple[DtlsServer, FakeCache, Path], state: str, alert_text: str, cause: Cause
) -> None:
    server, cache, d = cert_server
    der = Path(d / "d.pem").read_bytes()
    from cryptography import x509

    fp = fingerprint_der(x509.load_pem_x509_certificate(der).public_bytes(Encoding.DER))
    if state == "revoked":
        cache.bad.add(fp)
    elif state == "unregistered":
        cache.bad.add(fp)  # the resolver's negative cache: unknown
    client = Client(cert_context(str(d / "d.pem"), str(d / "d.key"), str(d / "ca.pem")))
    transfer(server, client, ADDR, client.start(), now=dt.datetime.now(dt.UTC).timestamp())
    if state == "cache cannot vouch":
        server.credential_resolved(ADDR, dt.datetime.now(dt.UTC).timestamp())
        for out, _ in server.datagrams_to_send():
            client.receive(out)
    assert client.failed is not None and alert_text in str(client.failed), client.failed
    closed = [e for e in server.events() if isinstance(e, SessionClosed)]
    assert [e.cause for e in closed] == [cause]
    # The log says what happened: the cause, the certificate, the alert it was told.
    assert f"sent {alert_text.replace(' ', '_')}" in closed[0].detail, closed[0].detail
    assert "internal error" not in str(client.failed) or cause is Cause.UNAVAILABLE


def test_a_client_that_aborts_its_own_handshake_is_not_a_failed_authentication() -> None:
    server = make_server()
    half_done(server, ADDR)
    server.receive_datagram(alert_record(80), ADDR, NOW)  # e.g. tinydtls: "psk too long"
    (event,) = list(server.events())
    assert isinstance(event, SessionClosed) and event.cause is Cause.PEER_ABORTED
    assert "internal_error (80)" in event.detail
    assert not Cause.PEER_ABORTED.counts_against_source


def test_openssl_failures_are_told_in_words() -> None:
    assert _ssl_reason(SSL.SysCallError(-1, "Unexpected EOF")).startswith("OpenSSL stopped")
    err = SSL.Error([("SSL routines", "", "no shared cipher")])
    assert _ssl_reason(err) == "no shared cipher"
    assert "SysCallError" not in _ssl_reason(SSL.SysCallError(104, "ECONNRESET"))


# -- the timer heap ----------------------------------------------------------------------------
def test_timer_heap_pops_due_deadlines_in_order_and_skips_replaced_ones() -> None:
    heap: TimerHeap[int] = TimerHeap()
    heap.set(1, "a", 5.0)
    heap.set(2, "a", 3.0)
    heap.set(1, "a", 7.0)  # replaces 5.0
    heap.set(3, "b", 1.0)
    heap.cancel(3, "b")
    assert heap.next_deadline() == 3.0
    assert heap.pop_due(6.0) == [(2, "a")]
    assert heap.pop_due(7.0) == [(1, "a")]
    assert heap.next_deadline() is None and len(heap) == 0


def test_timer_heap_stays_the_size_of_what_is_alive() -> None:
    heap: TimerHeap[int] = TimerHeap()
    for key in range(100_000):  # handshake, then forget: every entry goes stale
        heap.set(key, "handshake", float(key))
        heap.set(key, "idle", float(key) + 300)
        heap.cancel_all(key, ("handshake", "idle"))
    assert len(heap) == 0
    assert len(heap._heap) <= 200  # compacted: stale entries never outnumber live ones by much


def test_no_timer_keeps_a_forgotten_peer_alive() -> None:
    server = make_server(handshake_rate=0.0)
    for port in range(200):
        client = handshake(server, ("127.0.0.1", 30_000 + port))
        transfer(server, client, ("127.0.0.1", 30_000 + port), client.close())
    list(server.events())
    assert len(server) == 0
    assert server.next_timer(NOW) is None
    assert len(server._timers._heap) <= 200 and len(server._retransmits._heap) <= 200
