"""Several broker processes on one host sharing their ports (``reuse_port``).

Real ``corem-ingress serve`` processes on one real Redis, all on the same MQTT, CoAP/DTLS
and HTTP ports (each its own health port), and real clients: paho-mqtt devices,
libcoap's ``coap-client-openssl`` and the simulator's DTLS client. The kernel spreads TCP
connections and UDP flows (by their 4-tuple) over the processes: every client succeeds,
both processes get some (each one's ``/metrics``), a revocation reaches both. Then what
happens to held DTLS sessions when a process joins or dies: the kernel re-hashes every flow
over the new set of sockets; with a Connection ID the records a process gets for another's
session are forwarded to it (``coap.connection_id``), without one the session is lost and
the device handshakes again (abbreviated, from the resumption store in Redis).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiocoap.numbers.codes import Code

from corem_ingress.core.identity import CredentialKind
from corem_ingress.embedded_redis import free_port
from corem_ingress.sim.dtls_client import AsyncDtlsClient, psk_context
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry
from tests.ops.brokers import Broker, Device, metric, wait_ready
from tests.ops.test_faults_coap import post
from tests.ops.test_load_balancer import coap_post

pytestmark = pytest.mark.integration

MQTT_LIVE = 'corem_sessions_live{tenant="rp",transport="mqtt"}'
COAP_LIVE = 'corem_sessions_live{tenant="rp",transport="coap"}'
COAP_OK = 'corem_uplinks_total{outcome="ok",transport="coap"}'
RESUMED = 'corem_dtls_resumptions_total{outcome="resumed"}'
HTTP_OK = 'corem_uplinks_total{outcome="ok",transport="http"}'


def shared_ports() -> dict[str, int]:
    return {"mqtt": free_port(), "coap": free_port(), "http": free_port()}


def on_shared_ports(
    brokers: Callable[..., Broker], name: str, ports: dict[str, int], **env: str
) -> Broker:
    b = brokers(
        name,
        coap=True,
        http=True,
        env_extra={
            "COREM_REUSE_PORT": "true",
            "COREM_MQTT_PORT": str(ports["mqtt"]),
            "COREM_COAP_PORT": str(ports["coap"]),
            "COREM_HTTP_PORT": str(ports["http"]),
            **env,
        },
    )
    b.mqtt_port, b.coap_port, b.http_port = ports["mqtt"], ports["coap"], ports["http"]
    return b


async def per_broker(bs: list[Broker], line: str) -> list[int]:
    return [int(await asyncio.to_thread(metric, b, line)) for b in bs]


async def test_two_processes_share_every_port(
    brokers: Callable[..., Broker],
    registry: Registry,
    redis: aioredis.Redis,
    keys: KeySchema,
    pki: dict[str, Path],
) -> None:
    ports = shared_ports()
    a, b = on_shared_ports(brokers, "rp-a", ports), on_shared_ports(brokers, "rp-b", ports)
    await asyncio.gather(wait_ready(a), wait_ready(b))

    # MQTT: 24 devices held at once, each one QoS 1 uplink.
    n_mqtt = 24
    made = [
        await registry.provision("rp", f"SN-M{i}", CredentialKind.API_KEY, actor="test")
        for i in range(n_mqtt)
    ]
    devices = []
    for out in made:
        assert out.api_key is not None
        devices.append(Device(out.device.device_id, out.api_key.api_key, pki["ca"]))
    try:
        for dev in devices:
            assert await asyncio.to_thread(dev.connect, ports["mqtt"]) == 0
            await asyncio.to_thread(dev.publish, 1)
        held = await per_broker([a, b], MQTT_LIVE)
        assert sum(held) == n_mqtt and min(held) > 0, held

        # CoAP/DTLS: 24 libcoap clients (a process, a source port and a handshake each),
        # every datagram of a handshake and its request must reach the same process.
        key = secrets.token_urlsafe(30).encode()  # printable: libcoap -k takes text
        await registry.provision(
            "rp", "SN-C", CredentialKind.PSK, actor="test", psk_identity="rp:c", psk_bytes=key
        )
        n_coap = 24
        codes = await asyncio.gather(
            *(coap_post(ports["coap"], "rp:c", key, f'{{"c":{i}}}') for i in range(n_coap))
        )
        assert codes == [0] * n_coap
        assert await redis.xlen(keys.uplink_stream("rp")) == n_mqtt + n_coap
        stored = await per_broker([a, b], COAP_OK)
        assert sum(stored) == n_coap and min(stored) > 0, stored

        # HTTP uplinks on the shared port (new connections: the kernel spreads them too).
        http_out = await registry.provision("rp", "SN-H", CredentialKind.API_KEY, actor="test")
        assert http_out.api_key is not None
        key_h = http_out.api_key.api_key
        n_http = 24
        statuses = await asyncio.gather(
            *(
                asyncio.to_thread(http_uplink, ports["http"], http_out.device.device_id, key_h, i)
                for i in range(n_http)
            )
        )
        assert statuses == [202] * n_http, statuses
        http_stored = await per_broker([a, b], HTTP_OK)
        assert sum(http_stored) == n_http and min(http_stored) > 0, http_stored

        # A revocation reaches both processes over the bus: every device is disconnected.
        for out in made:
            assert out.api_key is not None
            await registry.revoke_api_key("rp", out.api_key.key_id, actor="test")
        for dev in devices:
            assert await asyncio.to_thread(dev.disconnected.wait, 10), "not disconnected"
        orders = await per_broker(
            [a, b], 'corem_disconnect_orders_total{reason="credential_revoked",transport="mqtt"}'
        )
        assert orders == held, (orders, held)
        assert await per_broker([a, b], MQTT_LIVE) == [0, 0]
    finally:
        for dev in devices:
            dev.close()


def http_uplink(port: int, device_id: str, api_key: str, n: int) -> int:
    """One uplink on a new connection (urllib does not keep it): the kernel picks a process."""
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/devices/{device_id}/uplink",
        data=json.dumps({"kind": "telemetry", "payload": {"h": n}}).encode(),
        headers={"X-API-Key": api_key, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


async def hold(ctx_of: list[object], port: int, *, cid: bool) -> list[AsyncDtlsClient]:
    clients = []
    for ctx in ctx_of:
        c = await AsyncDtlsClient.connect(ctx, port, cid=b"" if cid else None)  # type: ignore[arg-type]
        assert c.client.done
        clients.append(c)
    return clients


async def answered(clients: list[AsyncDtlsClient], n: int, timeout: float) -> int:
    codes = await asyncio.gather(*(post(c, f'{{"r":{n}}}'.encode(), timeout) for c in clients))
    return sum(code == Code.CHANGED for code in codes)


async def test_held_dtls_sessions_when_a_process_joins_or_dies(
    brokers: Callable[..., Broker],
    registry: Registry,
) -> None:
    """Sessions held on two processes; a third joins (every flow re-hashed over three
    sockets), then one dies. With a CID every session keeps working through the join (the
    process a record reaches forwards it to the one holding the session) and only the dead
    process's sessions are lost; without, the sessions whose flow moved go unanswered and
    their devices handshake again, resuming their session from Redis."""
    ports = shared_ports()
    a, b = on_shared_ports(brokers, "rj-a", ports), on_shared_ports(brokers, "rj-b", ports)
    await asyncio.gather(wait_ready(a), wait_ready(b))
    n = 24
    ctxs: dict[str, list[object]] = {"rjc": [], "rjp": []}  # with a CID, plain
    for tenant, made in ctxs.items():
        for i in range(n):
            identity = f"{tenant}:d{i}"
            out = await registry.provision(
                tenant, f"SN-{i}", CredentialKind.PSK, actor="test", psk_identity=identity
            )
            assert out.psk is not None
            made.append(psk_context(identity.encode(), out.psk.psk))
    with_cid = await hold(ctxs["rjc"], ports["coap"], cid=True)
    plain = await hold(ctxs["rjp"], ports["coap"], cid=False)
    clients = with_cid + plain
    cid_live = 'corem_sessions_live{tenant="rjc",transport="coap"}'
    try:
        assert all(c.client.cid is not None for c in with_cid)
        assert all(c.client.cid is None for c in plain)
        assert await answered(clients, 1, 5) == 2 * n
        held = await per_broker([a, b], 'corem_sessions_live{tenant="rjp",transport="coap"}')
        held_cid = await per_broker([a, b], cid_live)
        assert sum(held) == n and min(held) > 0, held
        assert sum(held_cid) == n and min(held_cid) > 0, held_cid

        # A third process joins: the kernel re-hashes every flow over three sockets.
        c = on_shared_ports(brokers, "rj-c", ports)
        await wait_ready(c)
        cid_ok = await answered(with_cid, 2, 5)
        replies = await asyncio.gather(*(post(cl, b'{"r":2}', 3) for cl in plain))
        forwarded = sum(
            await per_broker([a, b, c], 'corem_dtls_cid_forwarded_total{direction="out"}')
        )
        assert cid_ok == n, f"CID sessions answered after a join: {cid_ok}/{n}"
        assert forwarded > 0
        # Without a CID, a flow that now reaches another process is unanswered there ...
        lost = [i for i, code in enumerate(replies) if code != Code.CHANGED]
        assert 0 < len(lost) < n, "no flow moved, or all did: the kernel's spread changed?"
        # ... and its device handshakes again (wherever its new flow lands), resuming.
        resumed_before = sum(await per_broker([a, b, c], RESUMED))
        again = []
        for i in lost:
            session = plain[i].client.conn.get_session()
            plain[i].close()
            ctx = ctxs["rjp"][i]
            resumed_client = await AsyncDtlsClient.connect(ctx, ports["coap"], session=session)  # type: ignore[arg-type]
            again.append(resumed_client)
        clients += again
        assert all(cl.client.done for cl in again)
        assert await answered(again, 3, 5) == len(again)
        resumed = sum(await per_broker([a, b, c], RESUMED)) - resumed_before
        assert resumed == len(again)

        # One process dies: its sessions are gone; every other CID session goes on
        # (wherever its flow now lands, it is forwarded to its process).
        b.proc.kill()
        await asyncio.to_thread(b.proc.wait, 5)
        cid_after_kill = await answered(with_cid, 4, 5)
        print(
            f"\nreuse_port: DTLS sessions held per process {held} (plain), {held_cid} (CID); "
            f"a 3rd process joins: CID sessions answered {cid_ok}/{n} ({forwarded} records "
            f"forwarded), plain {n - len(lost)}/{n} (the {len(lost)} others resumed on a new "
            f"handshake); one process killed: CID sessions answered {cid_after_kill}/{n}"
        )
        assert cid_after_kill == n - held_cid[1]
    finally:
        for cl in clients:
            cl.close()


async def test_a_shared_health_port_or_a_missing_reuse_port_stops_the_process(
    brokers: Callable[..., Broker],
) -> None:
    """The health port is never shared (its /metrics and /readyz are one process's), and a
    process without ``reuse_port`` cannot join the others' ports: either stops at start,
    saying it cannot listen (not that Redis is unreachable)."""
    ports = shared_ports()
    a = on_shared_ports(brokers, "rh-a", ports)
    await wait_ready(a)
    same_health = on_shared_ports(brokers, "rh-b", ports, COREM_HEALTH_PORT=str(a.health_port))
    no_reuse = on_shared_ports(brokers, "rh-c", ports, COREM_REUSE_PORT="false")
    for b in (same_health, no_reuse):
        assert await asyncio.to_thread(b.proc.wait, 30) == 1
        last = b.log.read_text().strip().splitlines()[-1]
        assert last.startswith("corem-ingress: error: cannot listen: "), last
        assert "address already in use" in last
    await wait_ready(a)  # the first one serves on
