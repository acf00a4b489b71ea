"""Redis connections from one URL: a single server, Sentinel, or Cluster.

    redis://[user:pass@]host:port[/db]          rediss://…  (TLS)   unix:///path/redis.sock
    redis+sentinel://[user:pass@]host:port[,host:port…]/service_name[/db]
    redis+cluster://[user:pass@]host:port[,host:port…]

Sentinel: the client asks the sentinels for the master of ``service_name`` on every new
connection, so after a failover it reconnects to the new master by itself. The password
(if any) is the master's; ``?sentinel_password=…`` gives the sentinels' own.

Cluster: commands are routed by key slot. Every registry key carries the hash tag
``{prefix}`` and every Lua script declares all its keys, so each script runs on one
node. Pub/sub is not routed by slot: a classic PUBLISH in a cluster reaches every
node, so the revocation bus subscribes through a plain connection to any one node
(``pubsub_factory``), moving to the next known node each time it reconnects. The
request path (credential lookups, uplink appends) does not use redis-py's cluster
client at all: see ``store/slot_router.py`` (``keyed_commands``).

Pools: every client has a bounded *blocking* pool: past ``max_connections`` a command waits
up to ``pool_wait_s`` for a free connection, then fails as unavailable (redis-py's default
pool raises "Too many connections" at once, which turned a burst into 503s).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

#: Errors that mean "Redis cannot serve this now" (fail closed, try later), cluster ones included:
#: CLUSTERDOWN, TRYAGAIN, a slot no node covers (not even a RedisError in redis-py).
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterException,
)

SENTINEL = "redis+sentinel"
CLUSTER = "redis+cluster"
PLAIN = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis URL (only the parts Sentinel and Cluster need beyond redis-py's own)."""

    scheme: str
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    service_name: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def parse_url(url: str) -> RedisTarget:
    """Parse and check a Redis URL; ValueError names what is wrong (never the password)."""
    scheme, sep, _rest = url.partition("://")
    if not sep:
        raise ValueError("not a URL")
    if scheme in PLAIN:
        return RedisTarget(scheme, url)
    if scheme not in (SENTINEL, CLUSTER):
        raise ValueError(f"unsupported scheme {scheme!r}")
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_pw, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if has_pw else None
    hosts = tuple(_host_port(h) for h in hostlist.split(",") if h)
    if not hosts:
        raise ValueError("names no host:port")
    query = parse_qs(parts.query)
    sentinel_password = query.get("sentinel_password", [None])[0]
    path = [p for p in parts.path.split("/") if p]
    if scheme == CLUSTER:
        if path:
            raise ValueError("a cluster URL has no path (a cluster has only database 0)")
        return RedisTarget(scheme, url, hosts, username=username, password=password)
    if not path or len(path) > 2:
        raise ValueError("must be redis+sentinel://host:port[,host:port]/service_name[/db]")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError("database must be a number")
        db = int(path[1])
    return RedisTarget(
        scheme,
        url,
        hosts,
        service_name=unquote(path[0]),
        db=db,
        username=username,
        password=password,
        sentinel_password=sentinel_password,
    )


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


def check_url(url: str) -> None:
    """Raises ValueError if ``url`` is not a Redis URL this module can connect to."""
    parse_url(url)


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """One client's connection settings: timeouts and its bounded blocking pool."""

    #: Connect and command timeout (seconds).
    socket_timeout: float = 2.0
    #: Connections at most (per node, on a cluster).
    max_connections: int = 50
    #: How long a command waits for a free connection before it fails as unavailable.
    wait_s: float = 2.0
    #: Send a command again, once, after a connection error: a pooled connection that a
    #: Redis restart closed fails on first use (redis-py's check at checkout does not see
    #: it). Only where a repeat is harmless (reads, idempotent writes); never for appends.
    retry_connection_error: bool = False

    def __post_init__(self) -> None:
        if self.socket_timeout <= 0 or self.max_connections < 1 or self.wait_s <= 0:
            raise ValueError("socket_timeout > 0, max_connections >= 1 and wait_s > 0")


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's master discovery with a blocking pool (redis-py has only the raising one)."""


class KeyedCommands(Protocol):
    """Commands whose keys all hash to the slot of ``key`` (one key, or one hash tag)."""

    async def execute(self, key: str, *args: Any) -> Any: ...

    async def aclose(self) -> None: ...


class ClientCommands:
    """KeyedCommands on a plain or Sentinel client: one server holds every key."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def execute(self, key: str, *args: Any) -> Any:
        client: Any = self.client
        return await client.execute_command(*args)

    async def aclose(self) -> None:
        await self.client.aclose()


def redis_client(
    url: str, *, socket_timeout: float = 2.0, pool: PoolSettings | None = None
) -> aioredis.Redis:
    """A client for ``url`` with str replies; for a cluster, a RedisCluster.

    RedisCluster offers the same command methods as Redis (not a subclass): it is returned
    typed as ``aioredis.Redis`` so that callers need not care which one they hold.
    ``pool`` (default: ``socket_timeout`` and 50 connections) bounds the client's pool.
    """
    target = parse_url(url)
    pool = pool or PoolSettings(socket_timeout=socket_timeout, wait_s=socket_timeout)
    socket_timeout = pool.socket_timeout
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "health_check_interval": 5,
    }
    if pool.retry_connection_error:
        common["retry"] = Retry(
            NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)
        )
    if target.scheme in PLAIN:
        blocking = BlockingConnectionPool.from_url(
            url,
            max_connections=pool.max_connections,
            timeout=pool.wait_s,
            retry_on_timeout=False,
            **common,
        )
        return aioredis.Redis.from_pool(blocking)
    if target.scheme == SENTINEL:
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
        }
        if target.sentinel_password is not None:
            sentinel_kwargs["password"] = target.sentinel_password
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts), sentinel_kwargs=sentinel_kwargs
        )
        master: aioredis.Redis = sentinel.master_for(
            target.service_name,
            redis_class=aioredis.Redis,
            db=target.db,
            username=target.username,
            password=target.password,
            retry_on_timeout=False,
            connection_pool_class=_BlockingSentinelPool,
            max_connections=pool.max_connections,
            timeout=pool.wait_s,
            **common,
        )
        return master
    cluster = _GatedCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
        username=target.username,
        password=target.password,
        max_connections=pool.max_connections,
        gate_wait_s=pool.wait_s,
        **common,
    )
    return cast(aioredis.Redis, cluster)


class _GatedCluster(RedisCluster):
    """A RedisCluster whose commands wait (bounded) for a turn instead of failing.

    redis-py's cluster nodes raise MaxConnectionsError at once past ``max_connections``; at
    most that many commands run at a time here, so no node's pool is ever exceeded, and a
    command that cannot get a turn within ``gate_wait_s`` fails as unavailable.
    """

    def __init__(self, *args: Any, gate_wait_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = asyncio.Semaphore(int(kwargs["max_connections"]))
        self._gate_wait_s = gate_wait_s

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self._gate_wait_s):
                await self._gate.acquire()
        except TimeoutError:
            raise redis.exceptions.ConnectionError("No connection available.") from None
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._gate.release()


def keyed_commands(url: str, pool: PoolSettings) -> KeyedCommands:
    """The request path's client: a plain/Sentinel client, or a per-node slot router."""
    target = parse_url(url)
    if target.scheme != CLUSTER:
        return ClientCommands(redis_client(url, pool=pool))
    from corem_ingress.store.slot_router import SlotRouter

    return SlotRouter(target.hosts, pool=pool, username=target.username, password=target.password)


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


#: Connection settings carried over from a cluster client to its plain pub/sub connections.
_NODE_KWARGS = (
    "username",
    "password",
    "socket_timeout",
    "socket_connect_timeout",
    "health_check_interval",
    "decode_responses",
    "encoding",
    "encoding_errors",
)


def pubsub_factory(client: aioredis.Redis) -> Callable[..., PubSub]:
    """What the bus calls for a fresh pub/sub on each (re)subscription.

    A plain or Sentinel client: its own ``pubsub``. A cluster client: a pub/sub on a plain
    connection to one cluster node, the next known node on each call, so that after a node
    fails the bus re-subscribes through another one.
    """
    if not isinstance(client, RedisCluster):
        return client.pubsub
    cluster: RedisCluster = client
    kwargs = {k: v for k, v in cluster.connection_kwargs.items() if k in _NODE_KWARGS}
    counter = itertools.count()
    clients: dict[str, aioredis.Redis] = {}

    def make(**pubsub_kwargs: Any) -> PubSub:
        nodes = cluster.get_nodes() or list(cluster.nodes_manager.startup_nodes.values())
        node = sorted(nodes, key=lambda n: n.name)[next(counter) % len(nodes)]
        plain = clients.get(node.name)
        if plain is None:
            # No silent reconnects to the same node: a failure ends this pub/sub at once and
            # the bus moves on to the next node (its own backoff) and resyncs.
            plain = aioredis.Redis(
                host=node.host, port=int(node.port), retry=Retry(NoBackoff(), 0), **kwargs
            )
            clients[node.name] = plain
        return plain.pubsub(**pubsub_kwargs)

    return make
