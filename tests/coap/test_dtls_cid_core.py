"""The sans-I/O DTLS server's Connection ID path (RFC 9146) with the simulator's OpenSSL
client asking for a CID: no sockets, the clock passed in. (mbedTLS interop, rebinding
through a real relay and two nodes: ``test_dtls_cid_interop.py``.)"""

from __future__ import annotations

import pytest

from corem_ingress.adapters.dtls import cid
from corem_ingress.adapters.dtls.events import ApplicationData, HandshakeCompleted, SessionClosed
from corem_ingress.adapters.dtls.server import DtlsServer
from corem_ingress.core.causes import Cause
from corem_ingress.sim.dtls_client import Client, psk_context
from tests.coap.test_dtls_core import KEY, NOW, make_server

pytestmark = pytest.mark.unit

HOME = ("127.0.0.1", 40000)
ROAMED = ("127.0.0.1", 40001)
ELSEWHERE = ("127.0.0.1", 40002)


def exchange(server: DtlsServer, client: Client, frm: tuple[str, int], first: list[bytes]) -> list:
    """Datagrams both ways until quiet; -> where the server's datagrams went."""
    sent_to = []
    pending = first
    for _ in range(30):
        for d in pending:
            server.receive_datagram(d, frm, NOW)
        out = server.datagrams_to_send()
        for d, to in out:
            sent_to.append(to)
            client.receive(d)
        pending = client.outgoing()
        if not pending:
            return sent_to
    raise AssertionError("no end to the exchange")


def cid_handshake(
    server: DtlsServer, cipher: str = "PSK-AES128-CCM8", request: bytes = b"\xbe\xef"
) -> Client:
    client = Client(psk_context(b"dev1", KEY, cipher), cid=request)
    exchange(server, client, HOME, client.start())
    assert client.done and client.failed is None
    return client


@pytest.mark.parametrize(
    "cipher",
    ["PSK-AES128-CCM8", "PSK-AES128-CCM", "PSK-AES128-GCM-SHA256", "PSK-AES256-GCM-SHA384"],
)
def test_cid_session_data_both_ways_in_cid_records(cipher: str) -> None:
    server = make_server()
    client = cid_handshake(server, cipher)
    (ev,) = list(server.events())
    assert isinstance(ev, HandshakeCompleted)
    assert server.stats["cid_negotiated"] == 1
    assert client.cid is not None and len(client.cid.peer_cid) == 8  # the CID we issued
    assert client.cid.peer_cid[:2] == server.config.node_tag
    (up,) = client.send(b"ping")
    assert up[0] == cid.CT_TLS12_CID and up[11:19] == client.cid.peer_cid
    server.receive_datagram(up, HOME, NOW)
    assert list(server.events()) == [ApplicationData(HOME, b"ping")]
    assert server.send(HOME, b"pong")
    ((down, to),) = server.datagrams_to_send()
    assert to == HOME and down[0] == cid.CT_TLS12_CID and down[11:13] == b"\xbe\xef"
    client.receive(down)
    assert client.received == [b"pong"]


def test_rebinding_moves_the_session_only_on_an_authenticated_newer_record() -> None:
    server = make_server()
    client = cid_handshake(server)
    list(server.events())
    (first,) = client.send(b"one")
    (second,) = client.send(b"two")
    server.receive_datagram(first, HOME, NOW)
    server.receive_datagram(second, ROAMED, NOW)  # the NAT gave the device a new port
    assert [e.data for e in server.events() if isinstance(e, ApplicationData)] == [b"one", b"two"]
    assert server.stats["cid_address_changes"] == 1
    # The layers above still name the session by where it started; it is reached there.
    assert server.established() == [HOME]
    assert server.send(HOME, b"notification")
    ((_, to),) = server.datagrams_to_send()
    assert to == ROAMED
    # Replayed (authentic, not newer), forged (newer, bad tag), or older-but-unseen from
    # elsewhere: processed or dropped, never moved.
    (third,) = client.send(b"three")
    (fourth,) = client.send(b"four")
    server.receive_datagram(fourth, ROAMED, NOW)
    server.receive_datagram(third, ELSEWHERE, NOW)  # late, authentic: delivered, not moved
    server.receive_datagram(second, ELSEWHERE, NOW)  # replay: dropped
    forged = bytearray(fourth)
    forged[10] += 1
    server.receive_datagram(bytes(forged), ELSEWHERE, NOW)
    data = [e.data for e in server.events() if isinstance(e, ApplicationData)]
    assert data == [b"four", b"three"]
    assert server.stats["cid_address_changes"] == 1
    assert server.stats["cid_stale_elsewhere"] == 1 and server.stats["cid_dropped_records"] == 2
    server.send(HOME, b"x")
    ((_, to),) = server.datagrams_to_send()
    assert to == ROAMED
    # Plain records from the old address reach nothing once the device moved on.
    server.receive_datagram(b"\x17\xfe\xfd\x00\x01" + bytes(20), HOME, NOW)
    assert list(server.events()) == []


def test_close_notify_both_ways_in_cid_records() -> None:
    server = make_server()
    client = cid_handshake(server)
    list(server.events())
    (bye,) = client.close()
    server.receive_datagram(bye, ROAMED, NOW)  # from a new address, authenticated: fine
    assert list(server.events()) == [SessionClosed(HOME, Cause.PEER_CLOSED, True, "close_notify")]
    ((answer, to),) = server.datagrams_to_send()
    assert to == ROAMED and answer[0] == cid.CT_TLS12_CID
    client.receive(answer)
    assert client.closed and len(server) == 0
    # The server closing: its close_notify in a CID record.
    client = cid_handshake(server)
    assert server.close(HOME)
    ((note, _),) = server.datagrams_to_send()
    client.receive(note)
    assert client.closed


def test_zero_length_cid_config_sends_cids_but_asks_for_none() -> None:
    server = make_server(cid_length=0)
    client = cid_handshake(server)
    assert client.cid is not None and client.cid.peer_cid == b""
    (up,) = client.send(b"plain record")
    assert up[0] == 23  # the client sends no CID
    server.receive_datagram(up, HOME, NOW)
    assert [e for e in server.events() if isinstance(e, ApplicationData)][-1].data == (
        b"plain record"
    )
    server.send(HOME, b"cid record")
    ((down, _),) = server.datagrams_to_send()
    assert down[0] == cid.CT_TLS12_CID  # but gets ours with its CID
    client.receive(down)
    assert client.received == [b"cid record"]
    (moved,) = client.send(b"from elsewhere")
    server.receive_datagram(moved, ROAMED, NOW)  # no CID: nothing finds the session
    assert server.stats["cid_address_changes"] == 0


def test_cid_disabled_answers_no_extension() -> None:
    server = make_server(cid_enabled=False)
    client = cid_handshake(server)
    assert client.cid is None and server.stats["cid_negotiated"] == 0
    (up,) = client.send(b"ping")
    assert up[0] == 23


def test_wrong_key_with_a_cid_finished_is_refused_at_once() -> None:
    server = make_server()
    client = Client(psk_context(b"dev1", b"w" * 32), cid=b"\x01")
    exchange(server, client, HOME, client.start())
    closed = [e for e in server.events() if isinstance(e, SessionClosed)]
    assert [c.cause for c in closed] == [Cause.WRONG_KEY]
    assert client.failed is not None and len(server) == 0
