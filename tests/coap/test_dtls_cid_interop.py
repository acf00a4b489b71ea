"""DTLS 1.2 Connection ID (RFC 9146) with mbedTLS 3.5.2's ``ssl_client2`` (``cid=1``), the
reference CID client of cellular device stacks.

ssl_client2 writes an HTTP-like request in each exchange; over CoAP that is a malformed
confirmable message, which the broker answers with a CoAP Reset: an application round
trip in CID records both ways (ssl_client2 prints what it read). A loopback relay plays
the NAT: it changes the device's source port mid-session and closes the old one, so an
answer sent to the old address would be lost and ssl_client2 would time out.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from corem_ingress import metrics
from corem_ingress.adapters.dtls import cluster
from corem_ingress.adapters.dtls.server import DtlsServer
from corem_ingress.store.registry import Registry
from tests.coap.conftest import CertSet, coap_listener, coap_port, provision_cert, provision_psk
from tests.coap.dtls_peers import LOOPBACK, _run
from tests.coap.udp_relay import Relay
from tests.peers import peer

_READ = re.compile(r"< Read from server: (\d+) bytes read")


async def ssl_client2(port: int, *extra: str, exchanges: int = 1) -> str:
    argv = [peer("ssl_client2"), f"server_addr={LOOPBACK}", f"server_port={port}", "dtls=1"]
    argv += ["read_timeout=2000", "max_resend=0", "debug_level=1", f"exchanges={exchanges}"]
    argv += list(extra)
    out, _ = await _run(argv, done=lambda _o: False, timeout=15.0)
    return out


@pytest.fixture
async def node(coap_node: Any) -> Any:
    return await coap_node()


async def _psk_device(registry: Registry) -> tuple[str, list[str]]:
    """A PSK device -> (device id, ssl_client2's arguments: the key in hex, <= 32 bytes)."""
    device_id, ident, key = await provision_psk(registry, key_bytes=32)
    return device_id, [f"psk={key.hex()}", f"psk_identity={ident}"]


async def _psk_args(registry: Registry) -> list[str]:
    return (await _psk_device(registry))[1]


def _server(node: Any) -> DtlsServer:
    return coap_listener(node).dtls_server


PSK_SUITES = [
    "TLS-PSK-WITH-AES-128-CCM-8",
    "TLS-PSK-WITH-AES-128-CCM",
    "TLS-PSK-WITH-AES-128-GCM-SHA256",
    "TLS-PSK-WITH-AES-256-GCM-SHA384",
]


@pytest.mark.parametrize("suite", PSK_SUITES)
async def test_psk_handshake_with_cid_and_exchange(
    node: Any, registry: Registry, suite: str
) -> None:
    port = coap_port(node)
    args = await _psk_args(registry)
    out = await ssl_client2(
        port, *args, "cid=1", "cid_val=beef", f"force_ciphersuite={suite}", exchanges=2
    )
    assert "(in)  : 8" in out or "Peer CID" in out, out
    assert len(_READ.findall(out)) == 2, out
    stats = _server(node).stats
    assert stats["cid_negotiated"] == 1 and stats["handshakes_completed"] == 1
    assert coap_listener(node).endpoint.stats["malformed"] == 2  # both requests arrived


async def test_ecdhe_ecdsa_with_cid(node: Any, registry: Registry, certs: CertSet) -> None:
    issued, cert, key = certs.device("cid-device")
    await provision_cert(registry, issued, ca=certs.ca)
    out = await ssl_client2(
        coap_port(node),
        f"crt_file={cert}",
        f"key_file={key}",
        f"ca_file={certs.ca_pem}",
        "server_name=localhost",
        "cid=1",
        "cid_val=c0ffee",
        "force_ciphersuite=TLS-ECDHE-ECDSA-WITH-AES-128-CCM-8",
    )
    assert len(_READ.findall(out)) == 1, out
    assert _server(node).stats["cid_negotiated"] == 1


async def test_rebinding_keeps_the_session(node: Any, registry: Registry) -> None:
    relay = Relay(coap_port(node))
    front = await relay.open()
    relay.rebind_before_cid_datagram = 2  # the second exchange comes from a new port
    server = _server(node)
    moves_before = _address_changes()
    try:
        out = await ssl_client2(
            front,
            *await _psk_args(registry),
            "cid=1",
            "cid_val=beef",
            "force_ciphersuite=TLS-PSK-WITH-AES-128-CCM-8",
            "skip_close_notify=1",  # the session stays for the checks below
            exchanges=3,
        )
        assert relay.rebinds == 1
        assert len(_READ.findall(out)) == 3, out  # answers reached the new port
        assert server.stats["handshakes_completed"] == 1  # no new handshake
        assert server.stats["cid_address_changes"] == 1
        assert _address_changes() == moves_before + 1  # the metric
        _old, new = relay.upstreams
        assert new.received and all(d[:1] == b"\x19" for d in new.received)
        # The next notification goes to the new address too.
        (session,) = server.established()
        before = len(new.received)
        assert coap_listener(node).transport.send(session, b"\x50\x00\x00\x01")  # NON
        await _until(lambda: len(new.received) > before)
        # A replayed record (authentic but not newer) from elsewhere moves nothing, nor
        # does a forged one (bad tag), nor one with a CID we never issued.
        recorded = [d for d in relay.sent_up if d[:1] == b"\x19"][-1]
        forged = bytearray(recorded)
        forged[10] ^= 0x40  # a newer sequence number: the tag no longer verifies
        unknown = bytearray(recorded)
        unknown[13] ^= 0xFF  # inside the CID, past the node's tag
        stranger = await Relay(coap_port(node)).open_socket()
        for datagram in (recorded, bytes(forged), bytes(unknown)):
            stranger.sendto(datagram, (LOOPBACK, coap_port(node)))
        await _until(
            lambda: (
                server.stats["cid_dropped_records"] >= 2
                and server.stats["dropped_unknown_cid"] >= 1
            )
        )
        stranger.close()
        assert server.stats["cid_address_changes"] == 1
        assert server.stats["handshakes_completed"] == 1
    finally:
        relay.close()


def _address_changes() -> float:
    return metrics.REGISTRY.get_sample_value("corem_dtls_cid_address_changes_total") or 0.0


async def _until(condition: Any, timeout: float = 3.0) -> None:
    """Wait (bounded) for something the event loop delivers."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_lost_server_finished_is_resent_from_the_cid_session(
    node: Any, registry: Registry
) -> None:
    """Our ChangeCipherSpec + Finished is lost: the broker already holds the session (our
    record layer, not OpenSSL's), the client retransmits its flight, and gets ours again."""
    relay = Relay(coap_port(node))
    front = await relay.open()
    relay.drop_server_finished = True
    try:
        out = await ssl_client2(
            front,
            *await _psk_args(registry),
            "cid=1",
            "cid_val=beef",
            "hs_timeout=300-2000",
            "force_ciphersuite=TLS-PSK-WITH-AES-128-CCM-8",
        )
    finally:
        relay.close()
    assert not relay.drop_server_finished  # one was dropped
    assert len(_READ.findall(out)) == 1, out
    assert _server(node).stats["handshakes_completed"] == 1


async def test_wrong_key_with_cid_is_refused_with_decrypt_error(
    node: Any, registry: Registry
) -> None:
    """The client's Finished comes in a CID record we cannot open: refused at once with the
    same alert and cause as without CID."""
    _dev, args = await _psk_device(registry)
    wrong = [a if not a.startswith("psk=") else "psk=" + "ab" * 32 for a in args]
    out = await ssl_client2(coap_port(node), *wrong, "cid=1", "cid_val=beef")
    assert re.search(r"fatal alert message \(msg 51\)", out), out  # decrypt_error
    stats = _server(node).stats
    assert stats["cid_negotiated"] == 1
    assert stats["closed:wrong_key"] == 1 and stats["handshakes_completed"] == 0


async def test_client_without_cid_is_unchanged(node: Any, registry: Registry) -> None:
    out = await ssl_client2(coap_port(node), *await _psk_args(registry))
    assert len(_READ.findall(out)) == 1, out
    assert _server(node).stats["cid_negotiated"] == 0


async def test_rebinding_onto_another_node_is_forwarded_to_the_owner(
    coap_node: Any, registry: Registry
) -> None:
    """The relay also moves the device to another node (a load balancer routing by the new
    address): that node forwards the CID records to the owner, which answers through it."""
    owner, other = await coap_node(), await coap_node()
    relay = Relay(coap_port(owner))
    front = await relay.open()
    relay.rebind_before_cid_datagram = 2
    relay.rebind_to = coap_port(other)
    forwarded = _forwarded()
    device_id, args = await _psk_device(registry)
    try:
        out = await ssl_client2(
            front,
            *args,
            "cid=1",
            "cid_val=beef",
            "force_ciphersuite=TLS-PSK-WITH-AES-128-CCM-8",
            "skip_close_notify=1",
            exchanges=3,
        )
        assert len(_READ.findall(out)) == 3, out
        held, passed = _server(owner).stats, _server(other).stats
        assert held["handshakes_completed"] == 1 and passed["handshakes_started"] == 0
        assert held["cid_address_changes"] == 1 and held["cid_via_node"] == 1
        assert passed["cid_forwarded"] == 2  # exchanges 2 and 3 went through the other node
        after = _forwarded()
        assert after["out"] - forwarded["out"] == 2 and after["in"] - forwarded["in"] == 2
        assert after["back"] - forwarded["back"] == 2  # the answers, sent on by the other node
        assert after["refused"] == forwarded["refused"]
        # The device only ever heard the node it talks to: the owner's answers came from
        # the other node's port, as the device's NAT expects.
        _old, new = relay.upstreams
        assert len(new.senders) == 2 and set(new.senders) == {coap_port(other)}
        # Revocation closes the session wherever it moved: the owner's close_notify goes
        # out through the other node too.
        await registry.revoke_psk("acme", device_id, actor="test")
        await _until(lambda: held["closed:credential_revoked"] == 1 and len(new.senders) == 3)
        assert set(new.senders) == {coap_port(other)}
        assert new.received[-1][:1] == b"\x19"  # the close_notify, in a CID record
    finally:
        relay.close()


async def test_forged_node_frames_are_refused(coap_node: Any) -> None:
    """Only a node that holds the shared key can speak for a device address."""
    node = await coap_node()
    before = _forwarded()["refused"]
    sock = await Relay(coap_port(node)).open_socket()
    fake = cluster.wrap(b"\x00" * 32, cluster.TO_OWNER, (LOOPBACK, 9), b"\x19" * 40)
    sock.sendto(fake, (LOOPBACK, coap_port(node)))
    sock.sendto(fake[:-1] + bytes([fake[-1] ^ 1]), (LOOPBACK, coap_port(node)))
    await _until(lambda: _forwarded()["refused"] >= before + 2)
    sock.close()
    assert _server(node).stats["cid_via_node"] == 0


def _forwarded() -> dict[str, float]:
    return {
        d: metrics.REGISTRY.get_sample_value("corem_dtls_cid_forwarded_total", {"direction": d})
        or 0.0
        for d in ("out", "in", "back", "refused")
    }
