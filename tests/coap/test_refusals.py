"""Every refusal of the issue, with real clients: the handshake fails (alert), nothing is
appended, and no state is kept for the refused peer."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from corem_ingress import devcerts
from corem_ingress.core.causes import Cause
from corem_ingress.core.certs import fingerprint_der
from tests.coap.conftest import (
    CertSet,
    cert_args,
    coap_listener,
    coap_port,
    provision_cert,
    provision_psk,
    psk_args,
    read_uplinks,
    run_client,
    url,
)


async def _no_sessions(node: Any) -> None:
    server = coap_listener(node).dtls_server
    for _ in range(200):  # bounded
        if len(server) == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{len(server)} DTLS sessions left")


async def _refused(node: Any, redis: Any, args: list[str], cause: Cause) -> None:
    res = await run_client(
        ["-m", "post", "-B", "5", *args, "-e", "x", url(coap_port(node), "up/event")]
    )
    assert "2.04" not in res.stdout
    assert await read_uplinks(redis, "acme") == []
    await _no_sessions(node)
    stats = coap_listener(node).dtls_server.stats
    reasons = [k for k in stats if k.startswith("closed:")]
    assert reasons == ["closed:" + cause.label], (reasons, res.stderr)
    assert stats["handshakes_completed"] == 0


async def test_unknown_psk_identity(coap_node: Any, redis: Any) -> None:
    node = await coap_node()
    await _refused(node, redis, psk_args("nobody", b"k" * 32), Cause.UNKNOWN_OR_REVOKED)


async def test_wrong_psk(coap_node: Any, registry: Any, redis: Any) -> None:
    node = await coap_node()
    _dev, ident, key = await provision_psk(registry)
    await _refused(node, redis, psk_args(ident, b"x" * len(key)), Cause.WRONG_KEY)


async def test_revoked_psk(coap_node: Any, registry: Any, redis: Any) -> None:
    node = await coap_node()
    dev, ident, key = await provision_psk(registry)
    await registry.revoke_psk("acme", dev, actor="test")
    await _refused(node, redis, psk_args(ident, key), Cause.UNKNOWN_OR_REVOKED)


async def test_unregistered_ca_signed_cert(coap_node: Any, redis: Any, certs: CertSet) -> None:
    node = await coap_node()
    _issued, cert, key = certs.device("unregistered")
    await _refused(node, redis, cert_args(cert, key, certs.ca_pem), Cause.UNKNOWN_OR_REVOKED)


async def test_unregistered_self_signed_cert(coap_node: Any, redis: Any, certs: CertSet) -> None:
    node = await coap_node()
    _issued, cert, key = certs.device("rogue", ca=None)
    await _refused(node, redis, cert_args(cert, key, certs.ca_pem), Cause.UNKNOWN_OR_REVOKED)


async def test_registered_cert_from_untrusted_ca(
    coap_node: Any, registry: Any, redis: Any, certs: CertSet
) -> None:
    # The fingerprint is registered, but the chain does not validate against our CA bundle.
    node = await coap_node()
    other_ca = devcerts.make_ca("someone else's CA")
    issued, cert, key = certs.device("other-ca", ca=other_ca)
    await provision_cert(registry, issued, ca=other_ca)  # the tenant trusts it; the node not
    await _refused(node, redis, cert_args(cert, key, certs.ca_pem), Cause.BAD_CERTIFICATE)


async def test_revoked_cert(coap_node: Any, registry: Any, redis: Any, certs: CertSet) -> None:
    node = await coap_node()
    issued, cert, key = certs.device("to-revoke")
    await provision_cert(registry, issued, ca=certs.ca)
    await registry.revoke_cert(
        "acme", fingerprint_der(issued.cert.public_bytes(Encoding.DER)), actor="test"
    )
    await _refused(node, redis, cert_args(cert, key, certs.ca_pem), Cause.UNKNOWN_OR_REVOKED)


async def test_expired_cert(
    coap_node: Any, registry: Any, redis: Any, certs: CertSet, clock: Any
) -> None:
    # Registered while valid; the node's clock is then past its notAfter.
    now = dt.datetime.now(dt.UTC)
    issued, cert, key = certs.device(
        "short-lived", not_before=now - dt.timedelta(hours=1), not_after=now + dt.timedelta(days=1)
    )
    await provision_cert(registry, issued, ca=certs.ca)
    clock.advance(2 * 86_400)
    node = await coap_node(clock=clock)
    await _refused(node, redis, cert_args(cert, key, certs.ca_pem), Cause.CERTIFICATE_EXPIRED)


@pytest.mark.parametrize("kind", ["psk", "x509"])
async def test_cross_tenant_device_lands_in_its_own_tenant_only(
    coap_node: Any, registry: Any, redis: Any, certs: CertSet, kind: str
) -> None:
    """Identity comes only from the credential: a device of tenant "globex" writes to
    globex's stream, never acme's, and gets only its own downlinks."""
    node = await coap_node()
    if kind == "psk":
        dev, ident, key = await provision_psk(registry, "globex")
        args = psk_args(ident, key)
    else:
        issued, cert, keyf = certs.device("globex-dev")
        dev = await provision_cert(registry, issued, tenant="globex", ca=certs.ca)
        args = cert_args(cert, keyf, certs.ca_pem)
    res = await run_client(["-m", "post", *args, "-e", "{}", url(coap_port(node), "up/telemetry")])
    assert res.rc == 0, res.stderr
    assert await read_uplinks(redis, "acme") == []
    (entry,) = await read_uplinks(redis, "globex")
    assert (entry["tenant_id"], entry["device_id"]) == ("globex", dev)
