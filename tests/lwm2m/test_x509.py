"""Certificate-authenticated LwM2M (issue 15.8). Wakaama's build is PSK-only, so: the
simulator's LwM2M client with a device certificate (Register, Read, Observe, queue mode,
revocation) over real DTLS, and mbedTLS's ``ssl_client2`` with the same kind of certificate
and the LwM2M-mandated suite ECDHE-ECDSA-AES128-CCM8 for the DTLS side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corem_ingress.core.identity import CredentialKind
from tests.coap.dtls_peers import Credential, mbedtls_ssl_client2
from tests.lwm2m.conftest import provision, until

pytestmark = pytest.mark.integration


async def test_a_certificate_device_registers_reads_observes_and_is_revoked(
    lwm2m_node: Any,
) -> None:
    n = await lwm2m_node(observe_paths=[])
    p = await provision(n.registry, n.certs, "x509")
    dev = n.device(p, binding="UQ")
    await dev.connect()
    reg = (await n.registration(p.device_id)).body
    assert (reg["security"], reg["credential_id"]) == ("x509", p.credential_id)
    assert reg["queue_mode"] is True and reg["reachable"] is True

    r = await n.op(p.device_id, "read", path="/3/0")
    assert r.status == 200, r.body
    assert {x["path"]: x["value"] for x in r.body["records"]}["/3/0/2"] == p.hardware_id
    r = await n.op(p.device_id, "observe", path="/3303/0/5700")
    assert r.status == 200 and r.body["records"][0]["value"] == 21.5
    await dev.send(2)  # 20.5: a notification over the certificate session -> an uplink
    ups = await n.uplinks(at_least=1)
    assert ups[-1]["device_id"] == p.device_id
    assert ups[-1]["payload"]["records"][0]["value"] == 20.5

    # Revoking the certificate closes the DTLS session and removes the registration.
    fingerprint = p.credential_id
    r = await n.api.request("DELETE", f"/api/v1/devices/certs/{fingerprint}", tenant="acme")
    assert r.status == 200, r.body
    await until(dev.closed.is_set)

    async def gone() -> bool:
        return (await n.registration(p.device_id)).status == 404

    await until(gone)


async def test_ssl_client2_with_a_device_certificate(lwm2m_node: Any) -> None:
    n = await lwm2m_node(observe_paths=[])
    listener = next(x for x in n.node.listeners if x.name == "coap")
    seen: list[tuple[str, str, str]] = []

    def hook(session: Any, started: bool) -> None:
        if started and session.credential is not None:
            ident = session.credential.identity
            seen.append((ident.tenant_id, ident.device_id, ident.credential_kind.value))

    listener.session_hooks.append(hook)
    p = await provision(n.registry, n.certs, "x509")
    assert p.cert is not None and p.key is not None
    cred = Credential("cert", cert=Path(p.cert), key_file=Path(p.key), server_ca=n.certs.ca_pem)
    run = await mbedtls_ssl_client2(
        cred, n.port, extra=("force_ciphersuite=TLS-ECDHE-ECDSA-WITH-AES-128-CCM-8",)
    )
    assert run.accepted, run.output[-2000:]
    assert "TLS-ECDHE-ECDSA-WITH-AES-128-CCM-8" in run.output
    # The session the broker opened is the device's, from its certificate.
    assert seen == [("acme", p.device_id, CredentialKind.X509.value)]

    # A certificate from a CA the tenant does not trust: refused in the handshake.
    _issued, cert, key = n.certs.device("SN-stranger", ca=_other_ca())
    stranger = Credential("cert", cert=cert, key_file=key, server_ca=n.certs.ca_pem)
    run = await mbedtls_ssl_client2(stranger, n.port)
    assert not run.accepted and run.alert is not None, run.output[-2000:]
    assert len(seen) == 1


def _other_ca() -> Any:
    from corem_ingress import devcerts

    return devcerts.make_ca("not the tenant's CA")
