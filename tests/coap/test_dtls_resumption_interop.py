"""DTLS session resumption (RFC 5246 session ids, our abbreviated handshake) with mbedTLS
3.5.2's ``ssl_client2 reconnect=1 tickets=1``: we issue no ticket, so the second
connection names the session id of the first. It must be resumed (ssl_client2's debug
output says "a session has been resumed", our counters agree) and its data answered — on
another node too: the relay sends the reconnection (a new source port) to a second node,
which finds the session in Redis. A credential revoked in between cannot resume."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from corem_ingress import metrics
from corem_ingress.adapters.dtls import resume
from corem_ingress.adapters.dtls.server import DtlsServer
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry
from tests.coap.conftest import CertSet, coap_listener, coap_port, provision_cert
from tests.coap.test_dtls_cid_interop import _READ, _psk_device, ssl_client2
from tests.coap.udp_relay import Relay

#: ssl_client2's debug level 3 says whether the server resumed (ssl_tls12_client.c).
RESUMED = "a session has been resumed"
NOT_RESUMED = "no session has been resumed"
RECONNECT = ["reconnect=1", "tickets=1", "debug_level=3", "skip_close_notify=0"]


def _server(node: Any) -> DtlsServer:
    return coap_listener(node).dtls_server


def _outcomes() -> dict[str, float]:
    return {
        o: metrics.REGISTRY.get_sample_value("corem_dtls_resumptions_total", {"outcome": o}) or 0.0
        for o in ("resumed", "full_handshake", "refused", "finished_failed")
    }


async def _stored(relay: Relay, redis: Any, keys: KeySchema) -> None:
    """Until the first node has stored the session its ServerHello named (a device that
    reboots takes longer than this write; ssl_client2 reconnects at once)."""
    issued = next(
        h for d in relay.upstreams[0].received if (h := resume.issued_hello(d)) is not None
    )
    assert len(issued.session_id) == 32  # OpenSSL's full handshake issued an id
    for _ in range(300):  # bounded: 3 s
        if await redis.exists(keys.dtls_session(issued.session_id.hex())):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the session was not stored")


async def _cert_args(registry: Registry, certs: CertSet, name: str) -> list[str]:
    issued, cert, key = certs.device(name)
    await provision_cert(registry, issued, ca=certs.ca)
    return [
        f"crt_file={cert}",
        f"key_file={key}",
        f"ca_file={certs.ca_pem}",
        "server_name=localhost",
        "force_ciphersuite=TLS-ECDHE-ECDSA-WITH-AES-128-CCM-8",
    ]


@pytest.mark.parametrize(
    ("credential", "cid"),
    [("psk", False), ("psk", True), ("x509", False), ("x509", True)],
)
async def test_reconnection_on_another_node_is_resumed(
    coap_node: Any,
    registry: Registry,
    certs: CertSet,
    redis: Any,
    keys: KeySchema,
    credential: str,
    cid: bool,
) -> None:
    first, second = await coap_node(), await coap_node()
    if credential == "psk":
        args = (await _psk_device(registry))[1]
    else:
        args = await _cert_args(registry, certs, f"resume-{int(cid)}")
    relay = Relay(coap_port(first))
    front = await relay.open()
    relay.reconnect_to = coap_port(second)
    relay.before_reconnect = lambda: _stored(relay, redis, keys)
    before = _outcomes()
    extra = ["cid=1", "cid_val=beef"] if cid else []
    try:
        out = await ssl_client2(front, *args, *extra, *RECONNECT)
    finally:
        relay.close()
    assert relay.reconnects == 1
    assert out.count(NOT_RESUMED) == 1 and out.count(RESUMED) == 1, out  # full, then resumed
    assert "Reconnecting with saved session" in out
    assert len(_READ.findall(out)) == 2, out  # both connections' requests answered
    one, two = _server(first).stats, _server(second).stats
    assert one["sessions_issued"] == 1 and one["handshakes_completed"] == 1
    assert two["resumptions_resumed"] == 1 and two["handshakes_completed"] == 1
    assert two["sessions_issued"] == 0  # no OpenSSL handshake on the second node
    assert two["cid_negotiated"] == int(cid)
    assert coap_listener(second).endpoint.stats["malformed"] == 1  # its request arrived
    after = _outcomes()
    assert after["resumed"] - before["resumed"] == 1


async def test_a_credential_revoked_in_between_cannot_resume(
    coap_node: Any, registry: Registry, redis: Any, keys: KeySchema
) -> None:
    first, second = await coap_node(), await coap_node()
    device_id, args = await _psk_device(registry)
    relay = Relay(coap_port(first))
    front = await relay.open()
    relay.reconnect_to = coap_port(second)

    async def revoke() -> None:
        await _stored(relay, redis, keys)
        await registry.revoke_psk("acme", device_id, actor="test")

    relay.before_reconnect = revoke
    before = _outcomes()
    try:
        out = await ssl_client2(front, *args, *RECONNECT)
    finally:
        relay.close()
    assert out.count(RESUMED) == 0, out
    assert len(_READ.findall(out)) == 1, out  # only the first connection was answered
    assert "Reconnecting with saved session" in out and "failed" in out.split("Reconnecting")[1]
    two = _server(second).stats
    assert two["resumptions_refused"] == 1 and two["handshakes_completed"] == 0
    assert two["closed:unknown_or_revoked"] == 1
    assert coap_listener(second).endpoint.stats["malformed"] == 0  # no data accepted
    assert _outcomes()["refused"] - before["refused"] == 1


async def test_a_resumed_cid_session_follows_a_nat_rebinding(
    coap_node: Any, registry: Registry, redis: Any, keys: KeySchema
) -> None:
    """Resumed on the second node (our record layer from the start), then the device's
    NAT rebinds before its request: the authenticated CID record moves the session."""
    first, second = await coap_node(), await coap_node()
    args = (await _psk_device(registry))[1]
    relay = Relay(coap_port(first))
    front = await relay.open()
    relay.reconnect_to = coap_port(second)
    relay.before_reconnect = lambda: _stored(relay, redis, keys)
    # CID datagrams: the first connection's request and close_notify, then the resumed
    # connection's request (its Finished goes with the ChangeCipherSpec, not counted).
    relay.rebind_before_cid_datagram = 3
    try:
        out = await ssl_client2(front, *args, "cid=1", "cid_val=beef", *RECONNECT)
    finally:
        relay.close()
    assert out.count(RESUMED) == 1 and len(_READ.findall(out)) == 2, out
    two = _server(second).stats
    assert relay.rebinds == 2  # to the second node, then the NAT
    assert two["resumptions_resumed"] == 1 and two["cid_address_changes"] == 1
