"""The CoAP listener inside a real node (real Redis, real UDP on loopback), with libcoap's
client and the in-process pyOpenSSL client: Observe, block-wise, 5.03 with Redis stopped,
revocation closing live Observe sessions on two nodes, handshake/close churn."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from aiocoap import CON, Message
from aiocoap.numbers.codes import Code

from corem_ingress.app import Node, redis_client
from corem_ingress.core.causes import Cause
from corem_ingress.core.downlink import Downlink
from corem_ingress.core.psk import KeyRing
from corem_ingress.embedded_redis import EmbeddedRedis, free_port
from corem_ingress.sim.dtls_client import AsyncDtlsClient, psk_context
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry
from tests.coap.conftest import (
    CertSet,
    coap_listener,
    coap_port,
    coap_section,
    provision_psk,
    psk_args,
    read_uplinks,
    run_client,
    url,
)
from tests.conftest import KEK_LINE, make_config

_mids = iter(range(1, 60_000))


async def coap(
    client: AsyncDtlsClient, code: Code, path: str, payload: bytes = b"", **opts: Any
) -> Message:
    m = Message(code=code, payload=payload)
    m.mtype, m.mid, m.token = CON, next(_mids), os.urandom(4)
    m.opt.uri_path = tuple(path.split("/"))
    for k, v in opts.items():
        setattr(m.opt, k, v)
    client.send(m.encode())
    while True:
        resp = Message.decode(await client.recv())
        if resp.token == m.token:
            return resp


async def _until(predicate: Any, what: str, tries: int = 500) -> None:
    for _ in range(tries):  # bounded
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_libcoap_observe_receives_downlinks(coap_node: Any, registry: Any) -> None:
    node = await coap_node()
    device_id, ident, key = await provision_psk(registry)
    listener = coap_listener(node)
    client = asyncio.ensure_future(
        run_client(["-m", "get", "-s", "6", *psk_args(ident, key), url(coap_port(node), "down")])
    )
    await _until(lambda: any(s.observations for s in listener.sessions.values()), "observe")
    await node.services.downlink_publisher.publish(
        Downlink.new("acme", device_id, "config", {"interval": 5}, qos=1, now=0.0)
    )
    await _until(lambda: node.services.downlinks.delivered >= 1, "delivery")
    res = await client
    assert '{"interval":5}' in res.stdout, (res.stdout, res.stderr)


async def test_libcoap_block1_uplink_and_413(
    coap_node: Any, registry: Any, redis: Any, tmp_path: Path
) -> None:
    node = await coap_node(max_body_bytes=2000)
    _device_id, ident, key = await provision_psk(registry)
    body = json.dumps({"samples": list(range(300))}).encode()
    assert 1000 < len(body) < 2000
    (tmp_path / "body.json").write_bytes(body)
    res = await run_client(
        [
            "-m",
            "post",
            "-b",
            "128",
            "-f",
            str(tmp_path / "body.json"),
            *psk_args(ident, key),
            url(coap_port(node), "up/telemetry"),
        ]
    )
    assert res.rc == 0, res.stderr
    (entry,) = await read_uplinks(redis, "acme")
    assert json.loads(entry["payload"]) == {"samples": list(range(300))}
    (tmp_path / "big.bin").write_bytes(b"z" * 5000)
    res = await run_client(
        [
            "-m",
            "post",
            "-b",
            "256",
            "-f",
            str(tmp_path / "big.bin"),
            *psk_args(ident, key),
            url(coap_port(node), "up/event"),
        ]
    )
    assert "4.13" in res.stdout + res.stderr, (res.stdout, res.stderr)
    assert len(await read_uplinks(redis, "acme")) == 1


async def test_handshake_close_churn_over_udp_leaves_nothing(coap_node: Any, registry: Any) -> None:
    node = await coap_node()
    _dev, ident, key = await provision_psk(registry)
    ctx = psk_context(ident.encode(), key)
    listener = coap_listener(node)
    for _ in range(200):
        c = await AsyncDtlsClient.connect(ctx, coap_port(node))
        assert c.client.done
        c.close()
    await _until(lambda: len(listener.dtls_server) == 0, "sessions freed")
    assert len(node.services.sessions) == 0 and listener.sessions == {}
    assert listener.dtls_server.stats["closed:peer_closed"] == 200


async def test_uplink_is_503_with_max_age_when_redis_is_stopped(
    certs: CertSet, kek_env: str
) -> None:
    server = EmbeddedRedis().start()
    node: Node | None = None
    try:
        r = redis_client(server.url)
        registry = Registry(
            r,
            KeySchema("corem"),
            keyring=KeyRing.parse(KEK_LINE),
            api_key_overlap=60,
            api_key_overlap_max=3600,
        )
        _dev, ident, key = await provision_psk(registry)
        await r.aclose()
        from corem_ingress.adapters import coap as coap_adapter

        cfg = make_config(server.url, coap=coap_section(certs, unavailable_max_age_s=9))
        node = Node(cfg, listener_factories=[coap_adapter.build])
        await node.start()
        c = await AsyncDtlsClient.connect(psk_context(ident.encode(), key), coap_port(node))
        ok = await coap(c, Code.POST, "up/telemetry", b"1")
        assert ok.code == Code.CHANGED
        server.close()  # Redis gone
        resp = await coap(c, Code.POST, "up/telemetry", b"2")
        assert resp.code == Code.SERVICE_UNAVAILABLE and resp.opt.max_age == 9
        c.close()
        # And a new handshake the cache cannot vouch for is refused (fail closed).
        other = await AsyncDtlsClient.connect(
            psk_context(b"not-cached", b"q" * 32), coap_port(node)
        )
        assert not other.client.done
        other.close()
    finally:
        if node is not None:
            await node.stop()
        server.close()


async def test_revocation_closes_live_observe_sessions_on_two_nodes(
    coap_node: Any, registry: Any, redis_url: str, certs: CertSet, tmp_path: Path
) -> None:
    node_a = await coap_node()
    port_b = free_port()
    env = {
        **os.environ,
        "COREM_REDIS_URL": redis_url,
        "COREM_PSK_KEK": KEK_LINE,
        "COREM_NODE_ID": "node-b",
        "COREM_STATE_DIR": str(tmp_path / "state"),
        "COREM_HTTP_ENABLED": "0",
        "COREM_MQTT_ENABLED": "0",
        "COREM_HEALTH_PORT": "0",
        "COREM_COAP_HOST": "127.0.0.1",
        "COREM_COAP_PORT": str(port_b),
        "COREM_COAP_SERVER_CERT": str(certs.server_pem),
        "COREM_COAP_SERVER_KEY": str(certs.server_key),
        "COREM_COAP_CLIENT_CA_FILES": str(certs.ca_pem),
        "COREM_COAP_HANDSHAKE_RATE_PER_S": "0",
        "COREM_LOGGING_FORMAT": "console",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "corem_ingress",
        "serve",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        device_id, ident, key = await provision_psk(registry)
        ctx = psk_context(ident.encode(), key)
        client_a = await AsyncDtlsClient.connect(ctx, coap_port(node_a))
        client_b = None
        for _ in range(60):  # node B starting: bounded retries
            assert proc.returncode is None, "node B exited"
            try:
                client_b = await AsyncDtlsClient.connect(ctx, port_b, timeout=1.0)
            except TimeoutError:
                continue
            if client_b.client.done:
                break
            client_b.close()
            await asyncio.sleep(0.2)
        assert client_b is not None and client_b.client.done, "node B did not come up"
        for c in (client_a, client_b):
            first = await coap(c, Code.GET, "down", observe=0)
            assert first.code == Code.CONTENT and first.opt.observe is not None
        # Both observe: a downlink reaches both nodes' sessions.
        await node_a.services.downlink_publisher.publish(
            Downlink.new("acme", device_id, "ping", "hello", qos=0, now=0.0)
        )
        for c in (client_a, client_b):
            note = Message.decode(await c.recv())
            assert note.payload == b"hello" and note.opt.observe is not None

        await registry.revoke_psk("acme", device_id, actor="test")
        await client_a.wait_closed()
        await client_b.wait_closed()
        assert client_a.client.closed and client_b.client.closed  # close_notify, not a timeout
        await _until(lambda: len(node_a.services.sessions) == 0, "node A forgot the session")
        assert len(coap_listener(node_a).dtls_server) == 0
        for port in (coap_port(node_a), port_b):
            again = await AsyncDtlsClient.connect(ctx, port)
            assert not again.client.done and again.client.failed is not None
            again.close()
        client_a.close()
        client_b.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_garbage_and_malformed_coap_do_not_break_the_listener(
    coap_node: Any, registry: Any
) -> None:
    node = await coap_node()
    port = coap_port(node)
    _dev, ident, key = await provision_psk(registry)
    loop = asyncio.get_running_loop()
    raw, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port)
    )
    rnd = __import__("random").Random(5)
    for n in range(300):
        raw.sendto(bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 200))))
        if n % 50 == 0:
            await asyncio.sleep(0)
    raw.sendto(b"\x16\xfe\xfd" + b"\x00" * 10)  # a truncated record header
    raw.close()
    c = await AsyncDtlsClient.connect(psk_context(ident.encode(), key), port)
    # Malformed CoAP inside the session: CON with a reserved token length -> RST.
    c.send(bytes([0x49, 0x01, 0xAB, 0xCD]) + b"x" * 9)
    rst = Message.decode(await c.recv())
    assert rst.mtype.name == "RST" and rst.mid == 0xABCD
    c.send(b"\xff")  # not even a header: dropped
    ok = await coap(c, Code.POST, "up/telemetry", b"still fine")
    assert ok.code == Code.CHANGED
    c.close()


async def test_server_initiated_request_mount_and_close_session(
    coap_node: Any, registry: Any
) -> None:
    """What LwM2M builds on: a request from the server to the device over its session,
    a mounted resource beside /up and /down, and closing one peer's session."""
    node = await coap_node()
    listener = coap_listener(node)
    seen: list[str] = []

    def rd(session: Any, msg: Message) -> Message:
        seen.append(session.credential.identity.device_id)
        return Message(code=Code.CREATED)

    listener.mount("rd", rd)
    device_id, ident, key = await provision_psk(registry)
    c = await AsyncDtlsClient.connect(psk_context(ident.encode(), key), coap_port(node))
    created = await coap(c, Code.POST, "rd", b"</3/0>")
    assert created.code == Code.CREATED and seen == [device_id]
    (addr,) = list(listener.sessions)
    read = Message(code=Code.GET)
    read.opt.uri_path = ("3", "0", "0")
    pending = asyncio.ensure_future(listener.request(addr, read, response_timeout=10))
    req = Message.decode(await c.recv())
    assert req.code == Code.GET and req.opt.uri_path == ("3", "0", "0") and req.mtype == CON
    ack = Message(code=Code.CONTENT, payload=b"corem-device")
    ack.mtype, ack.mid, ack.token = req.mtype.__class__.ACK, req.mid, req.token
    c.send(ack.encode())
    resp = await asyncio.wait_for(pending, 10)
    assert resp.payload == b"corem-device"
    assert listener.close_session(addr, Cause.CLOSED_BY_SERVER)
    await c.wait_closed()
    assert c.client.closed and listener.sessions == {} and len(node.services.sessions) == 0
    c.close()


async def test_undecodable_option_gets_4_02_and_a_handler_error_is_logged_once(
    coap_node: Any, registry: Any
) -> None:
    """Issue 11.4: a CON POST with Uri-Path ``ff fe`` (not UTF-8) is answered 4.02; an error
    raised while handling a DTLS event is logged once (no TypeError on the log call, no
    second traceback) and the session goes on."""
    from structlog.testing import capture_logs

    node = await coap_node()
    listener = coap_listener(node)
    _dev, ident, key = await provision_psk(registry)
    c = await AsyncDtlsClient.connect(psk_context(ident.encode(), key), coap_port(node))
    c.send(bytes([0x42, 0x02, 0x12, 0x34]) + b"tk" + bytes([0xB2]) + b"\xff\xfe")
    bad = Message.decode(await c.recv())
    assert bad.code == Code.BAD_OPTION and bad.mid == 0x1234 and bad.token == b"tk"

    real = listener.endpoint.datagram_received
    calls = 0

    def fails_once(addr: Any, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        real(addr, data)

    listener.endpoint.datagram_received = fails_once  # type: ignore[method-assign]
    with capture_logs() as logs:
        c.send(b"\x40\x00\x00\x01")  # an empty CON: would get a RST
        await _until(lambda: calls >= 1, "the failing handler")
        ok = await coap(c, Code.POST, "up/telemetry", b"still fine")
    assert ok.code == Code.CHANGED
    failed = [e for e in logs if e["event"] == "dtls.handler_failed"]
    assert len(failed) == 1 and failed[0]["dtls_event"] == "ApplicationData"
    assert not [e for e in logs if e["event"] == "dtls.receive_failed"]
    c.close()


async def test_libcoap_two_large_downlinks_back_to_back_are_not_mixed(
    coap_node: Any, registry: Any
) -> None:
    """Issue 11.7: each large notification has an ETag, and the next one goes out only once
    the device fetched the blocks of the previous one: libcoap reassembles both intact."""
    import re

    node = await coap_node()
    device_id, ident, key = await provision_psk(registry)
    listener = coap_listener(node)
    client = asyncio.ensure_future(
        run_client(["-m", "get", "-s", "3", *psk_args(ident, key), url(coap_port(node), "down")])
    )
    await _until(lambda: any(s.observations for s in listener.sessions.values()), "observe")
    # Both arrive at once (as from one burst on the bus): A's blocks are still being fetched
    # when B is ready to go out.
    for text in ("A" * 2000, "B" * 2000):
        dl = Downlink.new("acme", device_id, "config", text, qos=0, now=0.0)
        node.services.downlinks.on_message(dl.encode())
    res = await client
    runs = [(m.group(0)[0], len(m.group(0))) for m in re.finditer(r"A+|B+", res.stdout)]
    assert runs == [("A", 2000), ("B", 2000)], (runs, res.stderr[-500:])
