"""Just-in-time provisioning over DTLS (certificate): coap-client-openssl presents an
unregistered certificate of an auto-provisioning CA; the device is provisioned during the
handshake and its first uplink stored. Real node, real redis-server."""

from __future__ import annotations

from typing import Any

from corem_ingress.core.jitp import HardwareIdSource, JitpTemplate
from corem_ingress.store.keys import KeySchema
from tests.coap.conftest import CertSet, cert_args, coap_port, read_uplinks, run_client, url


async def test_dtls_certificate_is_provisioned_in_the_handshake(
    coap_node: Any, registry: Any, redis: Any, certs: CertSet
) -> None:
    port = coap_port(await coap_node())
    record, _ = await registry.add_ca("acme", certs.ca.cert_pem, actor="test")
    await registry.set_auto_provision(
        "acme", record.info.fingerprint, JitpTemplate(HardwareIdSource.SUBJECT_CN), actor="test"
    )
    _issued, cert, key = certs.device("SN-DTLS-1")
    res = await run_client(
        ["-m", "post", *cert_args(cert, key, certs.ca_pem), "-e", "1", url(port, "up/event")]
    )
    assert res.rc == 0, res.stderr
    device = await registry.find_device("acme", "SN-DTLS-1")
    (entry,) = await read_uplinks(redis, "acme")
    assert entry["device_id"] == device.device_id

    # Another certificate with this hardware_id: refused in the handshake, and audited.
    other = certs.device("SN-DTLS-1")  # same CN, new key
    refused = await run_client(
        [
            "-m",
            "post",
            *cert_args(other[1], other[2], certs.ca_pem),
            "-e",
            "2",
            url(port, "up/event"),
        ]
    )
    assert "access denied" in (refused.stdout + refused.stderr).lower()
    assert len(await read_uplinks(redis, "acme")) == 1
    audit = await redis.xrange(KeySchema("corem").audit_stream)
    outcomes = [f["outcome"] for _id, f in audit if f["action"] == "jitp.provision"]
    assert outcomes == ["OK", "ALREADY_EXISTS"]


async def test_dtls_never_rotates_before_possession_is_proven(
    coap_node: Any, registry: Any, redis: Any, certs: CertSet
) -> None:
    """The DTLS handshake asks for the certificate before the client's CertificateVerify:
    a certificate presented there may create its device but never rotate one (a replayed
    public certificate must not revoke the device's working one)."""
    port = coap_port(await coap_node())
    record, _ = await registry.add_ca("acme", certs.ca.cert_pem, actor="test")
    template = JitpTemplate(HardwareIdSource.SUBJECT_CN, allow_certificate_rotation=True)
    await registry.set_auto_provision("acme", record.info.fingerprint, template, actor="test")
    first, cert, key = certs.device("SN-DTLS-ROT")
    res = await run_client(
        ["-m", "post", *cert_args(cert, key, certs.ca_pem), "-e", "1", url(port, "up/event")]
    )
    assert res.rc == 0, res.stderr
    _second, cert2, key2 = certs.device("SN-DTLS-ROT")
    await run_client(
        ["-m", "post", *cert_args(cert2, key2, certs.ca_pem), "-e", "2", url(port, "up/event")]
    )
    device = await registry.find_device("acme", "SN-DTLS-ROT")
    creds = await registry.credentials("acme", device.device_id)
    assert [(c.lookup, c.status) for c in creds] == [(first.fingerprint, "active")]
    assert len(await read_uplinks(redis, "acme")) == 1
