"""Revocation disconnects live sessions on every node: one in-process node, one real
``corem-ingress serve`` subprocess, both on the same Redis."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from tests.conftest import KEK_LINE
from tests.mqtt.conftest import (
    MOSQUITTO_PUB,
    MOSQUITTO_SUB,
    Pki,
    paho_connect,
    provision_key,
    provision_x509,
    run,
    tls_args,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def second_node(redis_url: str, pki: Pki, tmp_path) -> AsyncIterator[int]:  # type: ignore[no-untyped-def]
    """``python -m corem_ingress serve`` with only MQTT enabled; yields its MQTT port."""
    env = {
        **os.environ,
        "COREM_REDIS_URL": redis_url,
        "COREM_PSK_KEK": KEK_LINE,
        "COREM_NODE_ID": "node-b",
        "COREM_STATE_DIR": str(tmp_path / "state"),
        "COREM_LOGGING_FORMAT": "console",
        "COREM_HEALTH_PORT": "0",
        "COREM_HTTP_ENABLED": "false",
        "COREM_COAP_ENABLED": "false",
        "COREM_MQTT_PORT": "0",  # the OS picks; read back from the node's log
        "COREM_MQTT_CLIENT_AUTH": "optional",
        "COREM_MQTT_SERVER_CERT": str(pki.server_cert),
        "COREM_MQTT_SERVER_KEY": str(pki.server_key),
        "COREM_MQTT_CLIENT_CA_FILES": str(pki.ca_file),
    }
    log = open(tmp_path / "node-b.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "corem_ingress", "serve"], env=env, stdout=log, stderr=log
    )
    try:
        async with asyncio.timeout(30):
            while True:
                text = (tmp_path / "node-b.log").read_text(errors="replace")
                assert proc.poll() is None, text
                found = re.search(r"mqtt\.listening .*port=(\d+)", text)
                if found:
                    port = int(found.group(1))
                    break
                await asyncio.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        yield port
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def subscriber(pki, dev, port, extra=()):  # type: ignore[no-untyped-def]
    proc = await asyncio.create_subprocess_exec(
        "stdbuf",
        "-oL",
        MOSQUITTO_SUB,
        *tls_args(pki, dev),
        "-p",
        str(port),
        "-i",
        dev.device_id,
        "-t",
        f"devices/{dev.device_id}/down/#",
        "-q",
        "1",
        "-d",
        *extra,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(15):
        while not (await proc.stdout.readline()).startswith(b"Subscribed"):
            pass
    return proc


async def ended(proc, timeout=20):  # type: ignore[no-untyped-def]
    """The subscriber process's output once it has exited (bounded)."""
    try:
        out = await asyncio.wait_for(proc.stdout.read(), timeout)
        await asyncio.wait_for(proc.wait(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode()


async def test_revoking_a_cert_drops_its_sessions_on_both_nodes(
    mqtt_node, registry, pki, second_node
):  # type: ignore[no-untyped-def]
    node, listener = await mqtt_node()
    dev = await provision_x509(registry, pki, "acme", "hw-rev")
    bystander = await provision_x509(registry, pki, "acme", "hw-bys")
    # Subscribers on both nodes; they run until the broker drops them.
    sub_a = await subscriber(pki, dev, listener.port)
    sub_b = await subscriber(pki, dev, second_node)
    sub_c = await subscriber(pki, bystander, listener.port)
    await wait_for(lambda: node.services.downlinks.has(dev.device_id))

    await registry.revoke_cert("acme", dev.cert.fingerprint, actor="test")

    for proc in (sub_a, sub_b):
        # Dropped, then its automatic reconnect is refused: mosquitto_sub gives up.
        out = await ended(proc)
        assert "not authorised" in out.lower() or "CONNACK (5)" in out, out
    await wait_for(lambda: not node.services.downlinks.has(dev.device_id))
    assert listener.stats["revocation_closes"] == 1
    assert sub_c.returncode is None  # other devices keep their sessions
    sub_c.terminate()
    await ended(sub_c)

    # A reconnect with the revoked certificate fails on both nodes.
    for port in (listener.port, second_node):
        _code, out = await run(
            [
                MOSQUITTO_PUB,
                *tls_args(pki, dev),
                "-p",
                str(port),
                "-i",
                dev.device_id,
                "-t",
                f"devices/{dev.device_id}/up/event",
                "-m",
                "x",
                "-d",
            ]
        )
        assert "CONNACK (5)" in out, out


async def test_api_key_revoke_and_rotation_overlap_end(mqtt_node, registry, pki, second_node):  # type: ignore[no-untyped-def]
    _node, listener = await mqtt_node(client_auth="optional")
    dev = await provision_key(registry, "acme", "hw-key")
    (cred,) = await registry.credentials("acme", dev.device_id)

    async def connect_key(port, key):  # type: ignore[no-untyped-def]
        rc, client = await asyncio.to_thread(
            paho_connect, port, pki, client_id=dev.device_id, password=key
        )
        return rc, client

    # Rotation: the old key keeps working during the overlap, then its sessions are dropped.
    rc, old_client = await connect_key(listener.port, dev.api_key)
    assert rc == 0
    rotated = await registry.rotate_api_key("acme", cred.credential_id, actor="test", overlap=1.0)
    await wait_for(lambda: not old_client.is_connected(), timeout=20)
    old_client.loop_stop()
    assert listener.stats["revocation_closes"] == 1
    rc, c = await connect_key(listener.port, dev.api_key)
    assert rc == 5
    c.loop_stop()

    # Revocation of the new key: sessions on both nodes drop.
    clients = []
    for port in (listener.port, second_node):
        rc, client = await connect_key(port, rotated.api_key)
        assert rc == 0
        clients.append(client)
    # Two sessions of one device on two nodes are allowed (take-over is per node).
    await registry.revoke_api_key("acme", rotated.key_id, actor="test")
    for client in clients:
        await wait_for(lambda c=client: not c.is_connected(), timeout=20)
        client.loop_stop()
    for port in (listener.port, second_node):
        rc, c = await connect_key(port, rotated.api_key)
        assert rc == 5
        c.loop_stop()
