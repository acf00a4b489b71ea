"""Session resumption in the sans-I/O server core (our abbreviated handshake, ``resume.py``)
with OpenSSL's own client resuming by session id (``set_session``): no sockets, no Redis
(the stored session is handed over as the listener would after its lookup)."""

from __future__ import annotations

import pytest
from OpenSSL import SSL

from corem_ingress.adapters.dtls import _binding, cid, resume
from corem_ingress.adapters.dtls.events import (
    ApplicationData,
    HandshakeCompleted,
    SessionClosed,
    SessionIssued,
    SessionLookup,
)
from corem_ingress.adapters.dtls.server import DtlsConfig, DtlsServer
from corem_ingress.core.causes import Cause
from corem_ingress.sim.dtls_client import Client, psk_context
from tests.coap.test_dtls_core import KEY, NOW, FakeCache, make_server, transfer

pytestmark = pytest.mark.unit

ADDR = ("127.0.0.1", 40000)
LATER = ("127.0.0.1", 40007)  # the device rebooted: a new port
#: The client's context and session (pyOpenSSL resumes only on the same context).
Resumable = tuple[SSL.Context, SSL.Session]


def first_session(cipher: str) -> tuple[Resumable, SessionIssued, bytes]:
    """A full handshake on one node -> (the client's session, what the node stored, the
    ServerHello's session id as seen on the wire)."""
    server = make_server(resumption=True)
    ctx = psk_context(b"dev1", KEY, cipher)
    client = Client(ctx)
    wire: list[bytes] = []
    pending = client.start()
    for _ in range(20):
        for d in pending:
            server.receive_datagram(d, ADDR, NOW)
        out = server.datagrams_to_send()
        for d, _ in out:
            wire.append(d)
            client.receive(d)
        pending = client.outgoing()
        if not pending:
            break
    assert client.done and client.failed is None
    issued = [e for e in server.events() if isinstance(e, SessionIssued)]
    assert len(issued) == 1 and issued[0].session.suite == cid.SUITE_IDS[cipher]
    hello = next(h for d in wire if (h := resume.issued_hello(d)) is not None)
    # OpenSSL marks the session of a connection freed without its close_notify as not
    # resumable (SSL_free -> SSL_CTX_remove_session).
    client.close()
    return (ctx, client.conn.get_session()), issued[0], hello.session_id


def resume_on(
    server: DtlsServer, session: Resumable, issued: SessionIssued | None
) -> tuple[Client, Cause | None]:
    """A new connection naming the session, on ``server``; the lookup answered with
    ``issued`` (None: not found)."""
    client = Client(session[0], session=session[1])
    transfer(server, client, LATER, client.start())  # ClientHello, HelloVerifyRequest, ...
    lookups = [e for e in server.events() if isinstance(e, SessionLookup)]
    assert len(lookups) == 1 and lookups[0].addr == LATER
    stored = None if issued is None else issued.session
    refused = server.session_found(LATER, lookups[0].session_id, stored, NOW)
    for d, _ in server.datagrams_to_send():
        client.receive(d)
    transfer(server, client, LATER, client.outgoing())
    return client, refused


@pytest.mark.parametrize("cipher", ["PSK-AES128-CCM8", "PSK-AES256-GCM-SHA384"])
def test_another_node_resumes_the_session_with_an_abbreviated_handshake(cipher: str) -> None:
    session, issued, on_wire = first_session(cipher)
    assert len(on_wire) == 32 and issued.session_id == on_wire  # OpenSSL issued it
    assert issued.session.extended_master_secret  # OpenSSL's client offers RFC 7627
    other = make_server(resumption=True)
    client, refused = resume_on(other, session, issued)
    assert refused is None and client.done and client.failed is None
    assert _binding.session_reused(client.conn)  # OpenSSL verified our Finished
    (done,) = [e for e in other.events() if isinstance(e, HandshakeCompleted)]
    assert done.cipher == cipher and done.credential is not None
    assert done.credential.lookup == "dev1"
    assert other.stats["resumptions_resumed"] == 1 and other.stats["sessions_issued"] == 0
    # Plain epoch-1 records both ways on our record layer (no CID: OpenSSL's client).
    transfer(other, client, LATER, client.send(b"ping"))
    assert list(other.events()) == [ApplicationData(LATER, b"ping")]
    assert other.send(LATER, b"pong")
    for d, _ in other.datagrams_to_send():
        client.receive(d)
    assert client.received == [b"pong"]
    transfer(other, client, LATER, client.close())
    assert list(other.events()) == [SessionClosed(LATER, Cause.PEER_CLOSED, True, "close_notify")]
    assert client.closed and len(other) == 0


def test_an_unknown_session_gets_a_full_handshake_and_openssl_never_resumes() -> None:
    """Not found (expired, another cluster): OpenSSL runs a full handshake, which issues a
    new id; the server that issued the first id does not resume it by itself either
    (SESS_CACHE_NO_INTERNAL)."""
    session, issued, _ = first_session("PSK-AES128-CCM8")
    server = make_server(resumption=True)
    client, refused = resume_on(server, session, None)
    assert refused is None and client.done and client.failed is None
    assert not _binding.session_reused(client.conn)
    events = list(server.events())
    assert any(isinstance(e, HandshakeCompleted) for e in events)
    (again,) = [e for e in events if isinstance(e, SessionIssued)]
    assert again.session_id != issued.session_id
    assert server.stats["resumptions_full_handshake"] == 1


def test_a_revoked_credential_cannot_resume() -> None:
    session, issued, _ = first_session("PSK-AES128-CCM8")
    cache = FakeCache()
    cache.bad.add("dev1")
    server = make_server(cache, resumption=True)
    client, refused = resume_on(server, session, issued)
    assert refused is Cause.UNKNOWN_OR_REVOKED
    assert not client.done and "access denied" in str(client.failed)
    (closed,) = [e for e in server.events() if isinstance(e, SessionClosed)]
    assert closed.cause is Cause.UNKNOWN_OR_REVOKED and not closed.established
    assert "resumption refused" in closed.detail
    assert server.stats["resumptions_refused"] == 1 and len(server) == 0


def test_a_changed_psk_cannot_resume() -> None:
    session, issued, _ = first_session("PSK-AES128-CCM8")
    cache = FakeCache()
    cache.psks["dev1"] = b"n" * 32
    server = make_server(cache, resumption=True)
    _client, refused = resume_on(server, session, issued)
    assert refused is Cause.UNKNOWN_OR_REVOKED


def test_our_lost_flight_is_resent_on_the_hello_again_and_on_the_timer() -> None:
    session, issued, _ = first_session("PSK-AES128-CCM8")
    clock = [1000.0]
    server = DtlsServer(
        cert_file=None,
        key_file=None,
        ca_files=[],
        credentials=FakeCache(),
        config=DtlsConfig(resumption=True),
        real_clock=lambda: clock[0],
    )
    client = Client(session[0], session=session[1])
    hello_again: list[bytes] = []
    pending = client.start()
    for _ in range(5):  # the cookie exchange
        for d in pending:
            server.receive_datagram(d, LATER, NOW)
            hello_again = [d]
        for d, _ in server.datagrams_to_send():
            client.receive(d)
        pending = client.outgoing()
    (lookup,) = [e for e in server.events() if isinstance(e, SessionLookup)]
    assert server.session_found(LATER, lookup.session_id, issued.session, NOW) is None
    lost = server.datagrams_to_send()
    assert lost  # our flight, lost on the way
    server.receive_datagram(hello_again[0], LATER, NOW)  # the client's ClientHello again
    assert [d for d, _ in server.datagrams_to_send()] == [d for d, _ in lost]
    clock[0] += 1.5  # our 1 s retransmission timer
    server.handle_timer(NOW)
    again = server.datagrams_to_send()
    assert [d for d, _ in again] == [d for d, _ in lost]
    for d, _ in again:
        client.receive(d)
    transfer(server, client, LATER, client.outgoing())
    assert client.done and server.stats["resumptions_resumed"] == 1
    # Idle: closed with our close_notify on our record layer.
    list(server.events())
    server.handle_timer(NOW + server.config.idle_timeout + 10)
    assert list(server.events()) == [SessionClosed(LATER, Cause.IDLE, True)]
    for d, _ in server.datagrams_to_send():
        client.receive(d)
    assert client.closed


def test_a_client_finished_that_does_not_verify_gets_an_alert() -> None:
    session, issued, _ = first_session("PSK-AES128-CCM8")
    server = make_server(resumption=True)
    client = Client(session[0], session=session[1])
    transfer(server, client, LATER, client.start())
    (lookup,) = [e for e in server.events() if isinstance(e, SessionLookup)]
    server.session_found(LATER, lookup.session_id, issued.session, NOW)
    for d, _ in server.datagrams_to_send():
        client.receive(d)
    (finished,) = client.outgoing()  # ChangeCipherSpec + Finished, one datagram
    forged = finished[:-1] + bytes([finished[-1] ^ 1])
    server.receive_datagram(forged, LATER, NOW)
    ((alert, _),) = server.datagrams_to_send()
    assert alert[0] == 21 and alert[-2:] == b"\x02\x33"  # fatal decrypt_error
    (closed,) = list(server.events())
    assert isinstance(closed, SessionClosed) and closed.cause is Cause.WRONG_KEY
    assert server.stats["resumptions_finished_failed"] == 1 and len(server) == 0
