"""A session whose full handshake completed lets its OpenSSL object go (``detach_openssl``,
issue 18) and goes on, without a CID, on the broker's record layer: OpenSSL's client must
not notice (its records and ours continue each other's sequence numbers and keys)."""

from __future__ import annotations

import pytest

from corem_ingress.adapters.dtls.events import ApplicationData, SessionClosed
from corem_ingress.core.causes import Cause
from corem_ingress.sim.dtls_client import Client, psk_context
from tests.coap.test_dtls_core import KEY, NOW, make_server, transfer

pytestmark = pytest.mark.unit

ADDR = ("127.0.0.1", 40000)


@pytest.mark.parametrize("cipher", ["PSK-AES128-CCM8", "PSK-AES256-GCM-SHA384"])
def test_a_detached_session_carries_data_both_ways_and_close_notify(cipher: str) -> None:
    server = make_server(detach_openssl=True)
    client = Client(psk_context(b"dev1", KEY, cipher))
    transfer(server, client, ADDR, client.start())
    assert client.done and server.stats["openssl_detached"] == 1
    list(server.events())
    for i in range(3):
        transfer(server, client, ADDR, client.send(b"up%d" % i))
        assert server.send(ADDR, b"down%d" % i)
        for d, _ in server.datagrams_to_send():
            client.receive(d)
    assert [e.data for e in server.events() if isinstance(e, ApplicationData)] == [
        b"up0",
        b"up1",
        b"up2",
    ]
    assert client.received == [b"down0", b"down1", b"down2"]
    transfer(server, client, ADDR, client.close())
    assert list(server.events()) == [SessionClosed(ADDR, Cause.PEER_CLOSED, True, "close_notify")]
    assert client.closed and len(server) == 0


def test_our_lost_finished_is_resent_by_a_detached_session() -> None:
    server = make_server(detach_openssl=True)
    client = Client(psk_context(b"dev1", KEY))
    pending = client.start()
    last: list[bytes] = []
    for _ in range(10):  # the handshake, until the client's last flight
        for d in pending:
            server.receive_datagram(d, ADDR, NOW)
        out = server.datagrams_to_send()
        if server.stats["handshakes_completed"]:
            last = pending
            break  # our ChangeCipherSpec + Finished: lost
        for d, _ in out:
            client.receive(d)
        pending = client.outgoing()
    assert server.stats["openssl_detached"] == 1 and not client.done
    for d in last:  # the client sends its flight again
        server.receive_datagram(d, ADDR, NOW)
    for d, _ in server.datagrams_to_send():
        client.receive(d)
    assert client.done and client.failed is None
    transfer(server, client, ADDR, client.send(b"after"))
    assert [e.data for e in server.events() if isinstance(e, ApplicationData)] == [b"after"]
