"""The LwM2M bootstrap server authenticated by the tenant CA: the simulator's LwM2M client
presents a certificate of one of its tenant's auto-provisioning CAs over real DTLS, sends
``POST /bs?ep=<hardware_id>``, is written Certificate mode (its own certificate, the
server's), registers, and answers a Read. Refusals: an unknown CA and a revoked certificate
in the handshake (DTLS alerts), a CA not marked for it and an endpoint that is not the
certificate's hardware_id (4.03, audited). Real node, real redis-server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiocoap.numbers.codes import Code
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from corem_ingress import devcerts
from corem_ingress.core.certs import fingerprint_der
from corem_ingress.core.identity import CredentialKind
from corem_ingress.core.jitp import HardwareIdSource, JitpTemplate
from corem_ingress.lwm2m.bootstrap import SECURITY_MODE_CERTIFICATE
from corem_ingress.sim import dtls_client
from corem_ingress.sim.devices import Target
from corem_ingress.sim.fleet import DeviceError
from corem_ingress.sim.lwm2m_device import Lwm2mDevice
from corem_ingress.store.keys import KeySchema
from tests.coap.conftest import CertSet
from tests.lwm2m.conftest import Lwm2mNode, provision, until

pytestmark = pytest.mark.integration

#: Concurrent bootstraps of one hardware_id: half with one certificate, half with others.
CONCURRENT = 50


async def _marked_node(
    lwm2m_node: Any,
    certs: CertSet,
    other_ca: devcerts.Issued | None = None,
    provisioning: dict[str, Any] | None = None,
) -> Lwm2mNode:
    """A node whose tenant acme auto-provisions (and so bootstraps) the test CA's devices;
    ``other_ca`` is trusted by the DTLS port and by acme, but not marked."""
    coap_extra: dict[str, Any] = {}
    if other_ca is not None:
        path = certs.dir / "other-ca.pem"
        path.write_bytes(other_ca.cert_pem)
        coap_extra["client_ca_files"] = [str(certs.ca_pem), str(path)]
    n = await lwm2m_node(coap_extra=coap_extra, provisioning=provisioning)
    if other_ca is not None:
        await n.registry.add_ca("acme", other_ca.cert_pem, actor="test")
    record, _ = await n.registry.add_ca("acme", n.certs.ca.cert_pem, actor="test")
    await n.registry.set_auto_provision(
        "acme", record.info.fingerprint, JitpTemplate(HardwareIdSource.SUBJECT_CN), actor="test"
    )
    return n


def _device(n: Lwm2mNode, name: str, cert: Path, key: Path, endpoint: str) -> Lwm2mDevice:
    dev = Lwm2mDevice(
        name,
        Target("127.0.0.1", n.port, str(n.certs.ca_pem)),
        endpoint=endpoint,
        cert_file=str(cert),
        key_file=str(key),
    )
    n.devices.append(dev)
    return dev


async def _audit(redis: Any, action: str = "lwm2m.bootstrap") -> list[dict[str, str]]:
    entries = await redis.xrange(KeySchema("corem").audit_stream)
    return [f for _id, f in entries if f["action"] == action]


async def _handshake_failure(port: int, cert: Path, key: Path, ca: Path) -> str:
    """The DTLS client's error for a refused handshake ('' if it completed)."""
    ctx = dtls_client.cert_context(str(cert), str(key), str(ca))
    client = await dtls_client.AsyncDtlsClient.connect(ctx, port, timeout=10)
    try:
        return "" if client.client.done else str(client.client.failed or "closed")
    finally:
        client.close()


async def test_certificate_bootstraps_registers_and_is_read(
    lwm2m_node: Any, certs: CertSet, redis: Any
) -> None:
    n = await _marked_node(lwm2m_node, certs)
    issued, cert, key = n.certs.device("SN-BSCA-1")
    dev = _device(n, "bsca-1", cert, key, "SN-BSCA-1")
    await dev.bootstrap()
    # The handshake provisioned it (JITP); the bootstrap wrote Certificate mode with its own
    # certificate and the server's, and no new secret.
    device = await n.registry.find_device("acme", "SN-BSCA-1")
    (cred,) = await n.registry.credentials("acme", device.device_id)
    assert cred.kind is CredentialKind.X509 and cred.lookup == issued.fingerprint
    assert [r[0] for r in dev.requests] == ["DELETE", "PUT", "PUT", "POST"]
    written = dev.bootstrapped
    assert written is not None and written.security_mode == SECURITY_MODE_CERTIFICATE
    assert written.client_certificate == issued.cert.public_bytes(Encoding.DER)
    server_pem = n.certs.server_pem.read_bytes()
    server_der = x509.load_pem_x509_certificate(server_pem).public_bytes(Encoding.DER)
    assert written.server_certificate == server_der
    assert written.server_uri == f"coaps://127.0.0.1:{n.port}" and not written.psk
    assert [(a["outcome"], a["target"].split()[0]) for a in await _audit(redis)] == [
        ("OK", "endpoint=SN-BSCA-1")
    ]
    # It registers with the written credential and the server reads it.
    await dev.connect()
    reg = (await n.registration(device.device_id)).body
    assert reg["endpoint"] == "SN-BSCA-1" and reg["security"] == "x509"
    r = await n.op(device.device_id, "read", path="/3/0/0")
    assert r.status == 200, r.body
    assert r.body["records"][0]["value"] == "CORE-M"


async def test_refusals(lwm2m_node: Any, certs: CertSet, redis: Any) -> None:
    other_ca = devcerts.make_ca("not marked CA")
    n = await _marked_node(lwm2m_node, certs, other_ca)

    # The endpoint is not the certificate's hardware_id: 4.03, audited, nothing created.
    _issued, cert, key = n.certs.device("SN-BSCA-2")
    dev = _device(n, "bsca-2", cert, key, "SN-SOMEONE-ELSE")
    with pytest.raises(DeviceError, match=r"coap_4\.03"):
        await dev.bootstrap()
    await dev.close()
    with pytest.raises(Exception, match="not found"):
        await n.registry.find_device("acme", "SN-SOMEONE-ELSE")

    # A CA the tenant trusts but did not mark: the registered device may not bootstrap.
    unmarked = devcerts.issue(other_ca, "SN-BSCA-3")
    u_cert, u_key = n.certs.dir / "u.pem", n.certs.dir / "u.key"
    unmarked.write(u_cert, u_key)
    await n.registry.provision(
        "acme", "SN-BSCA-3", CredentialKind.X509, actor="test", cert_pem=unmarked.cert_pem.decode()
    )
    dev3 = _device(n, "bsca-3", u_cert, u_key, "SN-BSCA-3")
    with pytest.raises(DeviceError, match=r"coap_4\.03"):
        await dev3.bootstrap()
    await dev3.close()
    outcomes = [(a["outcome"], a["target"].split()[0]) for a in await _audit(redis)]
    assert outcomes == [
        ("PERMISSION_DENIED", "endpoint=SN-SOMEONE-ELSE"),
        ("PERMISSION_DENIED", "endpoint=SN-BSCA-3"),
    ]

    # No ep: 4.00. A PSK device's session (not a claim) cannot bootstrap: 4.03.
    _i6, cert6, key6 = n.certs.device("SN-BSCA-6")
    dev6 = _device(n, "bsca-6", cert6, key6, "SN-BSCA-6")
    await dev6.open_session()
    assert (await dev6.request(Code.POST, ("bs",))).code == Code.BAD_REQUEST
    await dev6.close()
    psk_device = n.device(await provision(n.registry, n.certs, "psk"))
    with pytest.raises(DeviceError, match=r"coap_4\.03"):
        await psk_device.bootstrap()

    # A CA no tenant trusts: the handshake is refused (alert unknown_ca).
    foreign = devcerts.make_ca("foreign CA")
    f_issued = devcerts.issue(foreign, "SN-BSCA-4")
    f_cert, f_key = n.certs.dir / "f.pem", n.certs.dir / "f.key"
    f_issued.write(f_cert, f_key)
    failure = await _handshake_failure(n.port, f_cert, f_key, n.certs.ca_pem)
    assert "unknown ca" in failure.lower(), failure

    # A revoked certificate: its live session is closed, a new handshake refused (alert
    # access_denied), and JITP does not provision it again.
    issued5, cert5, key5 = n.certs.device("SN-BSCA-5")
    dev5 = _device(n, "bsca-5", cert5, key5, "SN-BSCA-5")
    await dev5.bootstrap()
    await n.registry.revoke_cert("acme", issued5.fingerprint, actor="test")
    await until(dev5.closed.is_set)
    failure = await _handshake_failure(n.port, cert5, key5, n.certs.ca_pem)
    assert "access denied" in failure.lower(), failure
    device = await n.registry.find_device("acme", "SN-BSCA-5")
    (cred,) = await n.registry.credentials("acme", device.device_id)
    assert cred.status == "revoked"


async def test_concurrent_bootstraps_of_one_hardware_id(lwm2m_node: Any, certs: CertSet) -> None:
    """50 devices bootstrap as SN-BSCA-RACE at once, half with one certificate and half with
    a certificate each: one device, one live credential, and every bootstrap that succeeded
    holds that credential's certificate."""
    n = await _marked_node(lwm2m_node, certs)
    hw = "SN-BSCA-RACE"
    shared = n.certs.device(hw)
    shared_files = (n.certs.dir / "race-shared.pem", n.certs.dir / "race-shared.key")
    shared[0].write(*shared_files)
    devices = []
    for i in range(CONCURRENT):
        if i % 2 == 0:
            cert, key = shared_files
        else:
            issued = devcerts.issue(n.certs.ca, hw)
            cert, key = n.certs.dir / f"race-{i}.pem", n.certs.dir / f"race-{i}.key"
            issued.write(cert, key)
        devices.append(_device(n, f"race-{i}", cert, key, hw))
    results = await asyncio.gather(*(d.bootstrap() for d in devices), return_exceptions=True)
    device = await n.registry.find_device("acme", hw)
    creds = await n.registry.credentials("acme", device.device_id)
    live = [c for c in creds if c.status == "active"]
    assert len(creds) == 1 and len(live) == 1
    winners = [d for d, r in zip(devices, results, strict=True) if r is None]
    assert winners, results
    for d in winners:
        assert d.bootstrapped is not None
        der = d.bootstrapped.client_certificate
        assert fingerprint_der(der) == live[0].lookup
    for r in results:
        assert r is None or isinstance(r, DeviceError), r


async def test_bootstrap_counts_in_the_tenant_provisioning_rate(
    lwm2m_node: Any, certs: CertSet, redis: Any
) -> None:
    """The tenant's provisioning rate counts JITP in the handshake and each Bootstrap-Request:
    with 2 a minute, the JITP and the first bootstrap pass, the next bootstrap gets 4.29."""
    n = await _marked_node(lwm2m_node, certs, provisioning={"tenant_rate_per_minute": 2})
    left = 60 - time.time() % 60
    if left < 5:  # all three counted in one fixed minute window
        await asyncio.sleep(left)
    _issued, cert, key = n.certs.device("SN-BSCA-RATE")
    dev = _device(n, "bsca-rate", cert, key, "SN-BSCA-RATE")
    await dev.bootstrap()
    with pytest.raises(DeviceError, match=r"coap_4\.29"):
        await dev.bootstrap()
    rated = [a for a in await _audit(redis, "jitp.provision") if a["target"] == "rate=tenant"]
    assert [a["outcome"] for a in rated] == ["RESOURCE_EXHAUSTED"]
