"""Tenant trust anchors at the DTLS handshake (issue 12 §1), with real clients: the chain
the device presented must end in one of the resolved tenant's CAs (Cause.FOREIGN_CA
otherwise); removing the CA closes the live session (close_notify) and refuses the next
handshake."""

from __future__ import annotations

import asyncio
from typing import Any

from aiocoap.numbers.codes import Code

from corem_ingress import devcerts
from corem_ingress.sim.dtls_client import AsyncDtlsClient, cert_context
from tests.coap.conftest import (
    CertSet,
    cert_args,
    coap_listener,
    coap_port,
    provision_cert,
    read_uplinks,
    run_client,
    url,
)
from tests.coap.test_node import coap
from tests.pki import register_as_before_tenant_cas, trust_ca


async def test_a_certificate_registered_by_another_tenant_does_not_authenticate_there(
    coap_node: Any, registry: Any, redis: Any, certs: CertSet
) -> None:
    node = await coap_node()
    await trust_ca(registry, "tenant-b", devcerts.make_ca("B's own CA"))
    issued, cert, key = certs.device("a-device")  # issued by A's CA, in the global bound
    await register_as_before_tenant_cas(registry, "tenant-b", "stolen", issued)
    res = await run_client(
        ["-m", "post", "-B", "5", *cert_args(cert, key, certs.ca_pem), "-e", "x", url(
            coap_port(node), "up/event"
        )]
    )  # fmt: skip
    assert "2.04" not in res.stdout
    assert await read_uplinks(redis, "tenant-b") == []
    stats = coap_listener(node).dtls_server.stats
    assert stats["closed:foreign_ca"] >= 1 and stats["handshakes_completed"] == 0, stats
    assert len(coap_listener(node).dtls_server) == 0


async def test_removing_the_ca_closes_the_live_session_and_refuses_the_next(
    coap_node: Any, registry: Any, certs: CertSet
) -> None:
    node = await coap_node()
    issued, cert, key = certs.device("live")
    await provision_cert(registry, issued, ca=certs.ca)
    ctx = cert_context(str(cert), str(key), str(certs.ca_pem))
    client = await AsyncDtlsClient.connect(ctx, coap_port(node))
    assert client.client.done, client.client.failed
    assert (await coap(client, Code.POST, "up/telemetry", b"{}")).code == Code.CHANGED

    await registry.remove_ca("acme", certs.ca.fingerprint, actor="test")

    await asyncio.wait_for(client.wait_closed(), 10)
    assert client.client.closed  # close_notify, not a timeout
    again = await AsyncDtlsClient.connect(
        cert_context(str(cert), str(key), str(certs.ca_pem)), coap_port(node)
    )
    assert not again.client.done and again.client.failed is not None
    again.close()
    client.close()
    assert coap_listener(node).dtls_server.stats["closed:foreign_ca"] == 1
