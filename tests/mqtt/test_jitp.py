"""Just-in-time provisioning over MQTT (mTLS): an unregistered certificate of a tenant's
auto-provisioning CA is provisioned in the handshake and its session accepted (paho,
mosquitto_pub); another certificate for the same hardware_id is refused and audited unless
the template allows rotation; 50 concurrent attempts make one device. Real node, real
redis-server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from corem_ingress import devcerts
from corem_ingress.core.certs import fingerprint_pem
from corem_ingress.core.jitp import HardwareIdSource, JitpTemplate
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry
from tests.mqtt.conftest import MOSQUITTO_PUB, DeviceCert, Pki, paho_connect, run, tls_args

_n = iter(range(10_000))


def device_cert(pki: Pki, cn: str, **kw: Any) -> DeviceCert:
    """A certificate of the test CA with this CN, in files of its own (several share a CN)."""
    issued = devcerts.issue(pki.ca, cn, **kw)
    n = next(_n)
    cert, key = pki.dir / f"jitp-{n}.pem", pki.dir / f"jitp-{n}.key"
    issued.write(cert, key)
    return DeviceCert(issued, cert, key)


async def auto_provision(registry: Registry, pki: Pki, **template: Any) -> str:
    record, _ = await registry.add_ca("acme", pki.ca.cert_pem, actor="test")
    fp = record.info.fingerprint
    await registry.set_auto_provision(
        "acme",
        fp,
        JitpTemplate(HardwareIdSource.SUBJECT_CN, metadata={"batch": "b7"}, **template),
        actor="test",
    )
    return fp


async def connack(port: int, pki: Pki, cert: Any) -> int | None:
    rc, client = await asyncio.to_thread(paho_connect, port, pki, cert=cert, reconnect=False)
    client.disconnect()
    client.loop_stop()
    return rc


async def jitp_audit(redis: Any) -> list[tuple[str, str]]:
    entries = await redis.xrange(KeySchema("corem").audit_stream)
    return [(f["target"], f["outcome"]) for _id, f in entries if f["action"] == "jitp.provision"]


async def test_unregistered_certificate_is_provisioned_in_the_handshake(  # type: ignore[no-untyped-def]
    mqtt_node, registry, pki, redis
) -> None:
    _node, listener = await mqtt_node()
    await auto_provision(registry, pki)
    cert = device_cert(pki, "SN-JITP-1")
    assert await connack(listener.port, pki, cert) == 0  # the same connection is accepted
    device = await registry.find_device("acme", "SN-JITP-1")
    creds = await registry.credentials("acme", device.device_id)
    assert [(c.kind.value, c.lookup, c.status) for c in creds] == [
        ("x509", cert.fingerprint, "active")
    ]
    assert json.loads(await redis.hget(f"{{corem}}:dev:{device.device_id}", "metadata")) == {
        "batch": "b7"
    }
    code, out = await run(
        [
            MOSQUITTO_PUB,
            *tls_args(pki, None, cert),
            "-p",
            str(listener.port),
            "-t",
            f"devices/{device.device_id}/up/event",
            "-m",
            "hi",
            "-q",
            "1",
            "-d",
        ]
    )
    assert code == 0 and "received PUBACK" in out, out

    # Another certificate with the same hardware_id: refused (CONNACK 5) and audited.
    other = device_cert(pki, "SN-JITP-1", key_kind="rsa")
    assert other.fingerprint != cert.fingerprint
    assert await connack(listener.port, pki, other) == 5
    assert await jitp_audit(redis) == [
        (f"hardware_id=SN-JITP-1 fingerprint={cert.fingerprint}", "OK"),
        (f"hardware_id=SN-JITP-1 fingerprint={other.fingerprint}", "ALREADY_EXISTS"),
    ]
    assert len(await registry.credentials("acme", device.device_id)) == 1


async def test_rotation_when_the_template_allows_it(mqtt_node, registry, pki) -> None:  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    await auto_provision(registry, pki, allow_certificate_rotation=True)
    first, second = device_cert(pki, "SN-ROT"), device_cert(pki, "SN-ROT", key_kind="rsa")
    assert await connack(listener.port, pki, first) == 0
    assert await connack(listener.port, pki, second) == 0
    device = await registry.find_device("acme", "SN-ROT")
    states = {c.lookup: c.status for c in await registry.credentials("acme", device.device_id)}
    assert states == {first.fingerprint: "revoked", second.fingerprint: "active"}
    assert await connack(listener.port, pki, first) == 5  # revoked: never provisioned again


async def test_no_auto_provisioning_without_the_ca_setting(mqtt_node, registry, pki) -> None:  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    fp = await auto_provision(registry, pki)
    await registry.set_auto_provision("acme", fp, None, actor="test")
    assert await connack(listener.port, pki, device_cert(pki, "SN-OFF")) == 5
    # A certificate without the template's source is refused too.
    await registry.set_auto_provision(
        "acme", fp, JitpTemplate(HardwareIdSource.SAN_URI), actor="test"
    )
    assert await connack(listener.port, pki, device_cert(pki, "SN-NOSAN")) == 5
    assert (await registry.list_devices("acme"))[0] == []


async def test_fifty_concurrent_attempts_make_one_device(
    registry, pki, keys, keyring, redis
) -> None:  # type: ignore[no-untyped-def]
    from corem_ingress.store.connection import redis_client

    await auto_provision(registry, pki)
    same = device_cert(pki, "SN-RACE")
    others = [device_cert(pki, "SN-RACE-2") for _ in range(10)]
    # Two "nodes" (separate clients) racing on the same certificate and on one hardware_id.
    url = f"redis://127.0.0.1:{redis.connection_pool.connection_kwargs['port']}"
    second = redis_client(url)
    try:
        node_b = Registry(
            second, keys, keyring=keyring, api_key_overlap=60, api_key_overlap_max=3600
        )
        ders = [_der(same.pem)] * 50
        results = await asyncio.gather(
            *((registry if i % 2 else node_b).jit_provision(d) for i, d in enumerate(ders))
        )
        assert all(results)
        device = await registry.find_device("acme", "SN-RACE")
        creds = await registry.credentials("acme", device.device_id)
        assert [c.lookup for c in creds] == [fingerprint_pem(same.pem)]

        results = await asyncio.gather(*(node_b.jit_provision(_der(o.pem)) for o in others))
        assert sum(results) == 1
        device2 = await registry.find_device("acme", "SN-RACE-2")
        assert len(await registry.credentials("acme", device2.device_id)) == 1
        devices, _ = await registry.list_devices("acme")
        assert len(devices) == 2
    finally:
        await second.aclose()


def _der(pem: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
