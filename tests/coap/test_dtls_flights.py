"""How the DTLS core judges the client's second flight (issue 11.1), pure: the in-process
pyOpenSSL client, no sockets, the clock passed in.

A wrong PSK shows only as a Finished that OpenSSL silently drops (its AEAD tag fails), so
the server refuses once the whole flight is there and the handshake is still not
complete — however the flight was split into datagrams, reordered, fragmented or
retransmitted — and never before.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from corem_ingress.adapters.dtls.events import HandshakeCompleted, SessionClosed
from corem_ingress.adapters.dtls.records import (
    CT_ALERT,
    CT_CHANGE_CIPHER_SPEC,
    split_records,
)
from corem_ingress.adapters.dtls.server import DtlsServer
from corem_ingress.core.causes import ALERT_DECRYPT_ERROR, Cause
from corem_ingress.core.certs import fingerprint_der
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.sim.dtls_client import Client, cert_context, psk_context
from tests.coap.sized_certs import issue_sized, short_ca
from tests.coap.test_dtls_core import (
    KEY,
    NOW,
    FakeCache,
    make_cert_server,
    make_server,
    transfer,
)

pytestmark = pytest.mark.unit

ADDR = ("127.0.0.1", 40100)
WRONG = b"w" * 32


def second_flight(server: DtlsServer, client: Client, now: float = NOW) -> list[bytes]:
    """Run the handshake until the client's second flight; return its records, unsent."""
    pending = client.start()
    for _ in range(10):  # bounded
        for d in pending:
            server.receive_datagram(d, ADDR, now)
        for d, _ in server.datagrams_to_send():
            client.receive(d)
        pending = client.outgoing()
        records = [r.raw for d in pending for r in split_records(d)]
        if any(r[0] == CT_CHANGE_CIPHER_SPEC for r in records):
            return records
    raise AssertionError("no second flight")


def deliver(server: DtlsServer, client: Client, datagram: bytes) -> list[bytes]:
    server.receive_datagram(datagram, ADDR, NOW)
    out = [d for d, _ in server.datagrams_to_send()]
    for d in out:
        client.receive(d)
    return out


def alerts(out: list[bytes]) -> list[int]:
    return [r.fragment[1] for d in out for r in split_records(d) if r.content_type == CT_ALERT]


# The PSK client's second flight is three records: ClientKeyExchange (0),
# ChangeCipherSpec (1), Finished (2). Each case: the records of each datagram, in order.
ORDERS = {
    "one datagram": [[0, 1, 2]],
    "one record per datagram (tinydtls)": [[0], [1], [2]],
    "Finished first": [[2], [0, 1]],
    "key exchange twice (retransmitted)": [[0], [0], [1], [2]],
    "Finished twice": [[0, 1], [2], [2]],
}


@pytest.mark.parametrize("order", ORDERS.values(), ids=list(ORDERS))
@pytest.mark.parametrize("right_key", [True, False], ids=["right key", "wrong key"])
def test_a_flight_is_judged_only_when_complete(order: list[list[int]], right_key: bool) -> None:
    server = make_server()
    client = Client(psk_context(b"dev1", KEY if right_key else WRONG))
    records = second_flight(server, client)
    assert len(records) == 3
    delivered: set[int] = set()
    for datagram in order:
        out = deliver(server, client, b"".join(records[n] for n in datagram))
        events = list(server.events())
        delivered |= set(datagram)
        if delivered != {0, 1, 2}:
            assert events == [] and len(server) == 1, events  # never judged before
            continue
        if right_key:
            assert client.done and isinstance(events[0], HandshakeCompleted)
        else:
            assert alerts(out) == [ALERT_DECRYPT_ERROR]
            assert events == [
                SessionClosed(
                    ADDR,
                    Cause.WRONG_KEY,
                    False,
                    "the client's Finished did not verify: it holds another key; "
                    "sent decrypt_error (51)",
                )
            ]
            assert client.failed is not None and "decrypt error" in str(client.failed)
            assert len(server) == 0
        return
    raise AssertionError("the flight was never complete")


@pytest.mark.parametrize(
    ("order", "right_key"),
    [([[2], [1], [0]], True), ([[1, 2], [0]], False)],
    ids=["reversed, right key", "key exchange lost, wrong key"],
)
def test_a_change_cipher_spec_before_the_key_exchange_does_not_count(
    order: list[list[int]], right_key: bool
) -> None:
    """OpenSSL discards a ChangeCipherSpec that overtakes the ClientKeyExchange: the flight
    is complete only when the client retransmits it, and a right key is never refused."""
    server = make_server()
    client = Client(psk_context(b"dev1", KEY if right_key else WRONG))
    records = second_flight(server, client)
    for datagram in order:
        deliver(server, client, b"".join(records[n] for n in datagram))
    assert list(server.events()) == [] and len(server) == 1
    # The client's retransmission timer (1 s, OpenSSL's real clock) sends the flight again.
    for _ in range(60):  # bounded wait
        timeout = client.conn.DTLSv1_get_timeout()
        if timeout is not None and timeout <= 0:
            break
        time.sleep(0.05)
    client.conn.DTLSv1_handle_timeout()
    for d in client.outgoing():
        deliver(server, client, d)
    (event,) = list(server.events())
    if right_key:
        assert isinstance(event, HandshakeCompleted) and client.done
    else:
        assert isinstance(event, SessionClosed) and event.cause is Cause.WRONG_KEY


# Every DER size from 300 to 1,200 bytes in steps, plus every size of the window in which
# this client's Finished is cut in two by the 1,252-byte MTU (certificate + CA chain +
# ClientKeyExchange + CertificateVerify + ChangeCipherSpec fill the first datagram),
# found by sweeping every size once, widened by 8 on each side: ECDSA signatures vary by a
# few bytes per run, which moves the window.
CERT_SIZES = sorted({*range(300, 1201, 25), *range(676, 712)})


def test_certificate_flights_of_every_size_complete(tmp_path: Path) -> None:
    ca = short_ca()
    cache = FakeCache()
    server = make_cert_server(tmp_path, ca, cache)
    now = dt.datetime.now(dt.UTC).timestamp()
    for n, size in enumerate(CERT_SIZES):
        leaf = issue_sized(ca, size)
        leaf.write(tmp_path / "d.pem", tmp_path / "d.key")
        fp = fingerprint_der(leaf.cert.public_bytes(Encoding.DER))
        cache.certs[fp] = DeviceIdentity("t", f"d{size}", CredentialKind.X509, fp)
        client = Client(
            cert_context(str(tmp_path / "d.pem"), str(tmp_path / "d.key"), str(tmp_path / "ca.pem"))
        )
        transfer(server, client, ("127.0.0.1", 20_000 + n), client.start(), now=now)
        events = list(server.events())
        assert client.done, (size, client.failed, events)
        assert isinstance(events[0], HandshakeCompleted), (size, events)
    assert server.stats["closed:wrong_key"] == 0
    # The window really cut the Finished in two (else this test proves nothing). Its width
    # moves with the signatures' sizes (9 to 13 sizes over runs): several, not one by luck.
    assert server.stats["client_finished_split"] >= 5, dict(server.stats)
