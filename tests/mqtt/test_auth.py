"""Authentication on the real listener: mosquitto_pub / paho / raw TLS clients, real Redis."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from corem_ingress.core.identity import CredentialKind
from tests.mqtt.conftest import (
    MOSQUITTO_PUB,
    RawClient,
    client_ssl,
    connect_packet,
    paho_connect,
    provision_key,
    provision_x509,
    run,
    tls_args,
)
from tests.pki import admission

pytestmark = pytest.mark.integration


def pub_cmd(pki, dev, port, *, client_id=None, topic=None, cert=None, extra=()):  # type: ignore[no-untyped-def]
    return [
        MOSQUITTO_PUB,
        *tls_args(pki, dev, cert),
        "-p",
        str(port),
        "-i",
        client_id if client_id is not None else dev.device_id,
        "-t",
        topic or f"devices/{dev.device_id}/up/telemetry",
        "-m",
        '{"temp": 21.5}',
        "-q",
        "1",
        "-d",
        *extra,
    ]


async def stream(redis, tenant):  # type: ignore[no-untyped-def]
    return await redis.xrange(f"corem:uplink:{{{tenant}}}")


async def test_cert_auth_stores_the_uplink_before_puback(mqtt_node, registry, pki, redis):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-1")
    code, out = await run(pub_cmd(pki, dev, listener.port))
    assert code == 0, out
    assert "received CONNACK (0)" in out and "received PUBACK" in out
    (entry,) = await stream(redis, "acme")
    fields = entry[1]
    assert fields["device_id"] == dev.device_id and fields["tenant_id"] == "acme"
    assert fields["transport"] == "mqtt" and fields["kind"] == "telemetry"
    assert fields["payload"] == '{"temp":21.5}'


async def test_required_client_auth_fails_the_handshake_without_a_cert(
    mqtt_node, registry, pki, redis
):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(client_auth="required")
    dev = await provision_key(registry, "acme", "hw-k")
    cmd = pub_cmd(pki, None, listener.port, client_id=dev.device_id, topic="devices/x/up/event")
    code, out = await run([*cmd, "-u", "d", "-P", dev.api_key or ""])
    assert code != 0 and "CONNACK" not in out
    rc, _client = await asyncio.to_thread(paho_connect, listener.port, pki, password=dev.api_key)
    assert rc is None  # never reached CONNECT
    assert listener.stats["connect_accepted"] == 0 and listener.stats["tls_failures"] >= 1
    assert await stream(redis, "acme") == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_tls_below_1_2_is_refused(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-old")
    ctx = client_ssl(pki, dev.cert)
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await RawClient.open(listener.port, ctx)


async def test_certificate_refusals(mqtt_node, registry, pki, tmp_path):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-a")
    # CA-valid but never registered: CONNACK 5.
    stranger = pki.device("unregistered")
    code, out = await run(pub_cmd(pki, dev, listener.port, cert=stranger))
    assert code != 0 and "CONNACK (5)" in out
    # Registered to another device: the client id must be the cert's device: CONNACK 5.
    other = await provision_x509(registry, pki, "acme", "hw-b")
    code, out = await run(pub_cmd(pki, other, listener.port, client_id=dev.device_id))
    assert code != 0 and "CONNACK (5)" in out
    # Revoked: CONNACK 5.
    await registry.revoke_cert("acme", dev.cert.fingerprint, actor="test")
    code, out = await run(pub_cmd(pki, dev, listener.port))
    assert code != 0 and "CONNACK (5)" in out
    # Signed by a CA we do not trust: the handshake fails.
    from corem_ingress import devcerts

    rogue_ca = devcerts.make_ca("rogue")
    rogue = devcerts.issue(rogue_ca, "rogue-device")
    rogue.write(tmp_path / "rogue.pem", tmp_path / "rogue.key")
    rc, _c = await asyncio.to_thread(
        paho_connect,
        listener.port,
        pki,
        cert=type(dev.cert)(rogue, tmp_path / "rogue.pem", tmp_path / "rogue.key"),
    )
    assert rc is None
    assert listener.stats["connect_accepted"] == 0


async def test_client_id_rules_with_paho(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-p")
    # Empty client id + clean session: gets the device id.
    rc, client = await asyncio.to_thread(paho_connect, listener.port, pki, cert=dev.cert)
    assert rc == 0
    client.disconnect()
    client.loop_stop()
    # Empty client id without clean session (paho will not send it): refused with
    # CONNACK 2, identifier rejected ([MQTT-3.1.3-8]; issue 13 moved it from 5).
    from corem_ingress.adapters.mqtt import codec

    raw = await RawClient.open(listener.port, client_ssl(pki, dev.cert))
    await raw.send(codec.encode_connect(codec.Connect(4, "", False, 30, None, None)))
    assert await raw.read_packet() == b"\x20\x02\x00\x02"
    assert await raw.closed_by_server()
    await raw.close()
    # Any other id: refused.
    rc, client = await asyncio.to_thread(
        paho_connect, listener.port, pki, cert=dev.cert, client_id="someone-else"
    )
    assert rc == 5
    client.loop_stop()


async def test_self_signed_only_when_allowed_and_registered(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    own = pki.device("self-signed-dev", self_signed=True)
    # Registered where the tenant allows self-signed devices, with proof of possession.
    proof = await admission(registry, "acme", own.issued, None)
    out = await registry.provision(
        "acme",
        "hw-ss",
        CredentialKind.X509,
        actor="test",
        cert_pem=own.pem,
        proof_of_possession=proof,
    )
    device_id = out.device.device_id
    # Default: self-signed certs fail the handshake even when registered.
    _node, listener = await mqtt_node()
    rc, _c = await asyncio.to_thread(paho_connect, listener.port, pki, cert=own)
    assert rc is None
    # allow_self_signed: the registered one connects ...
    _node2, listener2 = await mqtt_node(allow_self_signed=True)
    rc, client = await asyncio.to_thread(
        paho_connect, listener2.port, pki, cert=own, client_id=device_id
    )
    assert rc == 0
    client.disconnect()
    client.loop_stop()
    # ... an unregistered self-signed one gets CONNACK 5.
    unknown = pki.device("self-signed-unknown", self_signed=True)
    rc, client = await asyncio.to_thread(paho_connect, listener2.port, pki, cert=unknown)
    assert rc == 5
    client.loop_stop()


async def test_api_key_password_on_optional_listener(mqtt_node, registry, pki, redis):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(client_auth="optional")
    dev = await provision_key(registry, "acme", "hw-key")
    assert dev.api_key is not None
    base = [
        MOSQUITTO_PUB,
        *tls_args(pki, None),
        "-p",
        str(listener.port),
        "-i",
        dev.device_id,
        "-t",
        f"devices/{dev.device_id}/up/event",
        "-m",
        "door open",
        "-q",
        "1",
        "-d",
    ]
    code, out = await run([*base, "-u", dev.device_id, "-P", dev.api_key])
    assert code == 0 and "received PUBACK" in out, out
    (entry,) = await stream(redis, "acme")
    assert entry[1]["payload"] == '"door open"' and entry[1]["payload_encoding"] == "text"
    # No certificate and no password: no anonymous access.
    code, out = await run(base)
    assert "CONNACK (5)" in out
    # A password that is not an API key: CONNACK 4.
    code, out = await run([*base, "-u", "x", "-P", "hunter2"])
    assert "CONNACK (4)" in out
    # A well-formed but unknown key, then the revoked key: CONNACK 5.
    from corem_ingress.core import api_keys

    code, out = await run([*base, "-u", "x", "-P", api_keys.generate()])
    assert "CONNACK (5)" in out
    creds = await registry.credentials("acme", dev.device_id)
    await registry.revoke_api_key("acme", creds[0].credential_id, actor="test")
    code, out = await run([*base, "-u", "x", "-P", dev.api_key])
    assert "CONNACK (5)" in out
    assert len(await stream(redis, "acme")) == 1


async def test_cert_still_works_on_optional_listener(mqtt_node, registry, pki):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(client_auth="optional")
    dev = await provision_x509(registry, pki, "acme", "hw-opt")
    client = await RawClient.open(listener.port, client_ssl(pki, dev.cert))
    await client.send(connect_packet(dev.device_id))
    assert await client.read_packet() == b"\x20\x02\x00\x00"
    await client.close()
