"""The per-session memory options are set (issue 18): what bench.session_memory measures.

OpenSSL frees its record buffers of an idle connection only with SSL_MODE_RELEASE_BUFFERS;
a DTLS session keeps no handshake peek and no per-instance __dict__ once established."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from OpenSSL import SSL

from corem_ingress import devcerts
from corem_ingress.adapters.dtls.peer import PeerState
from corem_ingress.adapters.dtls.records import HandshakePeek
from corem_ingress.adapters.dtls.server import DtlsConfig, DtlsServer
from corem_ingress.adapters.mqtt import tls
from corem_ingress.config import MqttConfig
from corem_ingress.sim.dtls_client import Client, psk_context
from tests.coap.test_dtls_core import ADDR, KEY, NOW, FakeCache, transfer

pytestmark = pytest.mark.unit


def _mode(ctx: SSL.Context) -> int:
    return int(ctx.set_mode(0))  # SSL_CTX_set_mode ORs in nothing and returns the mode


def test_dtls_contexts_release_record_buffers_and_keep_no_session_cache() -> None:
    server = DtlsServer(cert_file=None, key_file=None, ca_files=[], credentials=FakeCache())
    for ctx in (server._ctx, server._psk_ctx):
        assert _mode(ctx) & SSL.MODE_RELEASE_BUFFERS
        assert ctx.get_session_cache_mode() == SSL.SESS_CACHE_OFF


def test_an_established_dtls_peer_keeps_no_dict_and_no_handshake_peek() -> None:
    server = DtlsServer(
        cert_file=None, key_file=None, ca_files=[], credentials=FakeCache(), config=DtlsConfig()
    )
    client = Client(psk_context(b"dev1", KEY))
    transfer(server, client, ADDR, client.start(), NOW)
    assert client.done
    peer = server._peers[ADDR]
    assert peer.state is PeerState.ESTABLISHED
    assert not hasattr(peer, "__dict__")  # slots
    spent = peer.peek
    assert spent == HandshakePeek()  # nothing of the handshake is kept...
    other = Client(psk_context(b"dev1", KEY))
    transfer(server, other, ("127.0.0.1", 40001), other.start(), NOW)
    assert server._peers[("127.0.0.1", 40001)].peek is spent  # ...and it is one shared object


def test_mqtt_tls_context_releases_record_buffers(tmp_path: Path) -> None:
    ca = devcerts.make_ca("t")
    ca.write(tmp_path / "ca.pem", tmp_path / "ca.key")
    devcerts.issue(ca, "localhost", server=True).write(tmp_path / "s.pem", tmp_path / "s.key")
    ctx = tls.server_context(
        MqttConfig(
            server_cert=str(tmp_path / "s.pem"),
            server_key=str(tmp_path / "s.key"),
            client_ca_files=[str(tmp_path / "ca.pem")],
        )
    )
    assert _mode(ctx) & SSL.MODE_RELEASE_BUFFERS
    assert ctx.get_session_cache_mode() == SSL.SESS_CACHE_OFF
    assert not hasattr(tls.TlsSession(ctx), "__dict__")


def _drain(conn: SSL.Connection) -> bytes:
    out = b""
    while True:
        try:
            out += conn.bio_read(65536)
        except SSL.WantReadError:
            return out


def test_mqtt_tls_session_swaps_its_handshake_bios_for_empty_ones_and_goes_on(
    tmp_path: Path,
) -> None:
    ca = devcerts.make_ca("t")
    ca.write(tmp_path / "ca.pem", tmp_path / "ca.key")
    devcerts.issue(ca, "localhost", server=True).write(tmp_path / "s.pem", tmp_path / "s.key")
    devcerts.issue(ca, "dev").write(tmp_path / "d.pem", tmp_path / "d.key")
    server_ctx = tls.server_context(
        MqttConfig(
            server_cert=str(tmp_path / "s.pem"),
            server_key=str(tmp_path / "s.key"),
            client_ca_files=[str(tmp_path / "ca.pem")],
        )
    )
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.use_certificate_file(str(tmp_path / "d.pem"))
    client_ctx.use_privatekey_file(str(tmp_path / "d.key"))
    session, client = tls.TlsSession(server_ctx), SSL.Connection(client_ctx, None)
    client.set_connect_state()
    for _ in range(10):  # bounded
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        session.receive(_drain(client))
        client.bio_write(session.outgoing() or b"")
        if session.handshake_done and session._bios_renewed:
            break
    assert session.handshake_done and session._bios_renewed
    assert session.peer_fingerprint() is not None
    # Records both ways over the new BIOs.
    client.send(b"\x10\x00")
    assert session.receive(_drain(client)) == b"\x10\x00"
    session.send(b"\x20\x02\x00\x00")
    client.bio_write(session.outgoing())
    assert client.recv(100) == b"\x20\x02\x00\x00"
