"""Failover of the Redis master under device load, per tenant (issue 22, points 1, 2, 6).

Real topologies: a Redis Cluster of 3 masters + 3 replicas (cluster-node-timeout 1500),
and Sentinel with 1 master, 2 replicas and 3 sentinels (quorum 2, down-after 1000 ms).
Two broker nodes (in-process, the HTTP listener as built) take uplinks from real aiohttp
clients at a steady rate, each device alternating between the nodes as a load balancer
would; every device's key is in both nodes' caches before the kill. Then the master
holding the registry's slot gets SIGKILL, with ``resolver.outage_grace_s`` off (0) and on.

Measured, per tenant: the outage window (the longest time without a 202), acked / stored
/ lost / duplicates, the longest request, and both nodes' /readyz over time. The figures
are printed (``pytest -s``) and reported in docs/reliability.md.

On the cluster the tenants are chosen so that one ("same") has its stream on the dying
master and the other ("other") on a healthy one; the key prefix puts the registry on the
master the revocation bus listens on, so the bus has a gap exactly when the registry's
slot has no master -- the case where the resolver used to refuse every credential.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from redis.crc import key_slot

from corem_ingress.adapters import http
from corem_ingress.app import Node
from corem_ingress.core.identity import CredentialKind
from tests.conftest import make_config
from tests.ops.redis_topologies import RedisClusterProcs, RedisProc, RedisSentinelProcs, _command

pytestmark = pytest.mark.integration

A = "cli:failover"
DEVICES_PER_TENANT = 2
SEND_EVERY_S = 0.05
TIMEOUT_S = 2.0  # redis.socket_timeout_s, the default
#: Acknowledged this close to the kill, an uplink may be lost to asynchronous replication.
REPLICATION_WINDOW_S = 0.1
#: The configurations measured side by side in one failover: resolver.outage_grace_s.
GRACE = {"off": 0.0, "on": 30.0}


@dataclass
class Answer:
    tenant: str
    at: float  # when the answer came (monotonic)
    status: int
    latency: float
    message_id: str | None = None


@dataclass
class Run:
    answers: list[Answer] = field(default_factory=list)
    #: (monotonic time, node index, /readyz status, degraded)
    readiness: list[tuple[float, int, int, bool]] = field(default_factory=list)


async def _device(
    run: Run, stop: asyncio.Event, tenant: str, device_id: str, key: str, bases: list[str]
) -> None:
    i = 0
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            base = bases[i % len(bases)]
            i += 1
            started = time.monotonic()
            status, message_id = 0, None
            try:
                async with session.post(
                    f"{base}/api/v1/devices/{device_id}/uplink",
                    headers={"X-API-Key": key},
                    json={"kind": "telemetry", "payload": {"i": i}},
                    timeout=aiohttp.ClientTimeout(total=15),
                ) as resp:
                    body = await resp.json()
                    status = resp.status
                    if status == 202:
                        message_id = body["message_id"]
            except (aiohttp.ClientError, TimeoutError):
                pass
            now = time.monotonic()
            run.answers.append(Answer(tenant, now, status, now - started, message_id))
            await asyncio.sleep(SEND_EVERY_S)


async def _watch_readiness(run: Run, stop: asyncio.Event, ports: list[int]) -> None:
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            for n, port in enumerate(ports):
                try:
                    async with session.get(
                        f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(total=2)
                    ) as resp:
                        body = await resp.json()
                        run.readiness.append(
                            (time.monotonic(), n, resp.status, bool(body["degraded"]))
                        )
                except (aiohttp.ClientError, TimeoutError):
                    run.readiness.append((time.monotonic(), n, 0, True))
            await asyncio.sleep(0.1)


def _outage(answers: list[Answer], after: float) -> float:
    """The longest time without a 202 for this tenant, from the kill on."""
    oks = sorted(a.at for a in answers if a.status == 202 and a.at >= after)
    marks = [after, *oks]
    return max(b - a for a, b in itertools.pairwise(marks)) if len(marks) > 1 else -1


def _readiness_summary(run: Run, killed_at: float) -> str:
    statuses = Counter(status for _t, _n, status, _d in run.readiness if _t >= killed_at)
    degraded = [t - killed_at for t, _n, _s, d in run.readiness if d and t >= killed_at]
    span = f"from {min(degraded):.1f} to {max(degraded):.1f}s" if degraded else "never"
    return f"/readyz answers after the kill {dict(statuses)}, degraded {span}"


async def _failover_run(
    *,
    label: str,
    url: str,
    prefix: str,
    tenants: dict[str, dict[str, str]],
    grace: dict[str, float],
    kill: Callable[[], float],
    promoted: Callable[[], bool],
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """Per configuration (a name -> ``resolver.outage_grace_s``): two nodes and the devices of
    that configuration's tenants (name -> tenant id). One kill for all. Prints and checks;
    returns per configuration and tenant the outage (s) and the answers other than 202
    after the kill."""
    nodes: dict[str, list[Node]] = {}
    run, stop = Run(), asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        for config, grace_s in grace.items():
            for _ in range(2):
                cfg = make_config(
                    url,
                    redis={"key_prefix": prefix, "socket_timeout_s": TIMEOUT_S},
                    resolver={"outage_grace_s": grace_s},
                    health={"check_interval_s": 0.2},
                )
                node = Node(cfg, listener_factories=[http.build])
                nodes.setdefault(config, []).append(node)
                await node.start()
        every = [n for pair in nodes.values() for n in pair]
        for node in every:
            assert node.bus is not None
            await asyncio.wait_for(node.bus.subscribed.wait(), 15)
        reg = every[0].services.registry  # type: ignore[union-attr]
        devices = 0
        for config, pair in nodes.items():
            bases = [f"http://127.0.0.1:{n.listeners[0].port}" for n in pair]
            for name, tenant in tenants[config].items():
                for d in range(DEVICES_PER_TENANT):
                    out = await reg.provision(tenant, f"SN-{d}", CredentialKind.API_KEY, actor=A)
                    assert out.api_key is not None
                    tasks.append(
                        asyncio.ensure_future(
                            _device(
                                run,
                                stop,
                                f"{config}/{name}",
                                out.device.device_id,
                                out.api_key.api_key,
                                bases,
                            )
                        )
                    )
                    devices += 1
        ports = [n.health_port for n in every]
        tasks.append(asyncio.ensure_future(_watch_readiness(run, stop, ports)))  # type: ignore[arg-type]
        # Steady state first: every key resolved on both nodes of its pair.
        async with asyncio.timeout(20):
            while sum(a.status == 202 for a in run.answers) < 4 * devices:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        assert {a.status for a in run.answers} == {202}, Counter(a.status for a in run.answers)

        killed_at = await asyncio.to_thread(kill)
        promoted_after = -1.0
        async with asyncio.timeout(30):
            while promoted_after < 0:
                if await asyncio.to_thread(promoted):
                    promoted_after = time.monotonic() - killed_at
                await asyncio.sleep(0.05)
        # Recovered: 202s only, for 2 s in a row.
        async with asyncio.timeout(30):
            while True:
                now = time.monotonic()
                recent = [a for a in run.answers if a.at > now - 2.0]
                if len(recent) > 10 and all(a.status == 202 for a in recent):
                    break
                await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)

        outage: dict[str, dict[str, float]] = {}
        refused: dict[str, dict[str, int]] = {}
        client = every[0].redis
        assert client is not None
        print(
            f"\n{label}: promoted after {promoted_after:.2f}s, {_readiness_summary(run, killed_at)}"
        )
        for config, grace_s in grace.items():
            print(f"  resolver.outage_grace_s={grace_s:g}:")
            for name, tenant in tenants[config].items():
                mine = [a for a in run.answers if a.tenant == f"{config}/{name}"]
                acked = [a.message_id for a in mine if a.message_id is not None]
                entries = await client.xrange(every[0].keys.uplink_stream(tenant))
                stored = [fields["message_id"] for _id, fields in entries]
                lost = set(acked) - set(stored)
                # Replication is asynchronous: what the old master acknowledged in its last
                # moments may be missing on the promoted replica (docs/reliability.md). Only
                # that window may lose anything.
                late = {a.message_id for a in mine if a.at >= killed_at - REPLICATION_WINDOW_S}
                dups = len(stored) - len(set(stored))
                outage.setdefault(config, {})[name] = _outage(mine, killed_at)
                codes = Counter(a.status for a in mine if a.at >= killed_at)
                refused.setdefault(config, {})[name] = sum(codes.values()) - codes[202]
                print(
                    f"    tenant {name}: outage {outage[config][name]:.2f}s, answers after "
                    f"kill {dict(codes)}, acked {len(acked)} stored {len(stored)} "
                    f"lost {len(lost)} duplicates {dups}, "
                    f"longest request {max(a.latency for a in mine):.2f}s"
                )
                assert lost <= late, f"{config}/{name}: acknowledged uplinks lost"
        longest = max(a.latency for a in run.answers)
        # Point 2: no device waited on Redis past the configured timeout (plus the request's
        # own work on this shared 2-core machine).
        assert longest < TIMEOUT_S + 1.5, f"a request took {longest:.2f}s"
        # Point 3: a shared dependency down never made a node unready.
        assert all(status == 200 for _t, _n, status, _d in run.readiness)
        return outage, refused
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pair in nodes.values():
            for node in pair:
                await node.stop()


# -- Redis Cluster 3 + 3 ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterProcs]:
    procs = RedisClusterProcs(replicas=1)
    try:
        yield procs.start()
    finally:
        procs.close()


def _cluster_roles(cluster: RedisClusterProcs) -> dict[int, str]:
    """port -> "master" or "slave" (CLUSTER NODES, live nodes only)."""
    reply = _command(cluster.live()[0].port, "CLUSTER", "NODES").decode()
    roles = {}
    for line in reply.splitlines():
        fields = line.split()
        if len(fields) > 2 and "fail" not in fields[2]:
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            roles[port] = "master" if "master" in fields[2] else "slave"
    return roles


def _wait_cluster_settled(cluster: RedisClusterProcs) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            roles = _cluster_roles(cluster)
            ok = all(
                b"cluster_state:ok" in _command(p.port, "CLUSTER", "INFO") for p in cluster.live()
            )
            links = [_command(p.port, "INFO", "replication") for p in cluster.live()]
            synced = sum(b"master_link_status:up" in x for x in links)
            if ok and len(roles) == 6 and synced == 3:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the cluster did not settle (3 masters, 3 synced replicas)")


def _bus_node(cluster: RedisClusterProcs) -> RedisProc:
    """The node the bus subscribes through first (store/connection.py: pubsub_factory takes
    the known nodes in name order); made a master (CLUSTER FAILOVER) if it is a replica."""
    first = min(cluster.procs, key=lambda p: f"127.0.0.1:{p.port}")
    if _cluster_roles(cluster).get(first.port) == "slave":
        assert _command(first.port, "CLUSTER", "FAILOVER").startswith(b"+OK")
        deadline = time.monotonic() + 15
        while _cluster_roles(cluster).get(first.port) != "master":
            assert time.monotonic() < deadline, "manual failover did not happen"
            time.sleep(0.05)
        _wait_cluster_settled(cluster)
    return first


def _on(cluster: RedisClusterProcs, port: int, stem: str, same: bool) -> str:
    return next(
        f"{stem}{i}"
        for i in range(1000)
        if (cluster.slot_owner(key_slot(f"{stem}{i}".encode())) == port) == same
    )


async def test_cluster_registry_master_killed_per_tenant_outage(
    cluster: RedisClusterProcs, kek_env: str
) -> None:
    _wait_cluster_settled(cluster)
    victim = _bus_node(cluster)
    run_id = uuid.uuid4().hex[:6]
    prefix = _on(cluster, victim.port, f"c{run_id}-", same=True)
    tenants = {
        config: {
            "same": _on(cluster, victim.port, f"s{config}{run_id}-", same=True),
            "other": _on(cluster, victim.port, f"o{config}{run_id}-", same=False),
        }
        for config in GRACE
    }
    slot = key_slot(prefix.encode())

    def kill() -> float:
        # Every node's bus listens on the victim: they all get a gap when it dies.
        assert b":4\r\n" in _command(victim.port, "PUBSUB", "NUMSUB", f"{prefix}:bus")
        victim.stop(kill=True)
        return time.monotonic()

    def promoted() -> bool:
        try:
            return cluster.slot_owner(slot) != victim.port
        except AssertionError:
            return False

    outage, refused = await _failover_run(
        label="cluster 3+3, registry master SIGKILL",
        url=cluster.url,
        prefix=prefix,
        tenants=tenants,
        grace=GRACE,
        kill=kill,
        promoted=promoted,
    )
    # Point 1: with the grace, a tenant whose stream is on a healthy master does not notice:
    # its keys are vouched for by the grace, its appends go to its own master -- not one
    # uplink refused. (Its longest gap between acks is the slowest request's latency, ~0.5 s
    # here, ~1.3 s with the suite's three workers on two cores: printed, for
    # docs/reliability.md, not asserted.)
    assert refused["on"]["other"] == 0, (refused, outage)
    # Without it (fail closed): the bus gap dropped the cache while the registry had no master.
    assert refused["off"]["other"] > 0 and outage["off"]["other"] > 1.0, (refused, outage)


# -- Sentinel: 1 master, 2 replicas, 3 sentinels ------------------------------------------------
@pytest.fixture(scope="module")
def sentinel() -> Iterator[RedisSentinelProcs]:
    procs = RedisSentinelProcs(replicas=2, sentinels=3, quorum=2, down_after_ms=1000)
    try:
        yield procs.start()
    finally:
        procs.close()


def _wait_sentinel_settled(topo: RedisSentinelProcs) -> int:
    """The master's port once both replicas are linked to it."""
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        try:
            port = topo.master_port()
            info = _command(port, "INFO", "replication").decode(errors="replace")
            if "role:master" in info and "connected_slaves:2" in info:
                return port
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError("sentinel setup did not settle (a master with 2 replicas)")


async def test_sentinel_master_killed_per_tenant_outage(
    sentinel: RedisSentinelProcs, kek_env: str
) -> None:
    master_port = await asyncio.to_thread(_wait_sentinel_settled, sentinel)
    victim = sentinel.by_port(master_port)
    run_id = uuid.uuid4().hex[:6]

    def kill() -> float:
        victim.stop(kill=True)
        return time.monotonic()

    def promoted() -> bool:
        try:
            return sentinel.master_port() != victim.port
        except (OSError, IndexError, ValueError):
            return False

    outage, _refused = await _failover_run(
        label="sentinel 1+2 (3 sentinels), master SIGKILL",
        url=sentinel.url,
        prefix=f"sn{run_id}",
        tenants={c: {"a": f"a{c}{run_id}", "b": f"b{c}{run_id}"} for c in GRACE},
        grace=GRACE,
        kill=kill,
        promoted=promoted,
    )
    # One master holds everything: every tenant waits for the promotion, grace or not.
    assert all(0 < o < 15 for per in outage.values() for o in per.values()), outage
