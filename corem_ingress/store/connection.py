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
(``pubsub_factory``), moving to the next known node each time it reconnects.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
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


def redis_client(url: str, *, socket_timeout: float = 2.0) -> aioredis.Redis:
    """A client for ``url`` with str replies; for a cluster, a RedisCluster.

    RedisCluster offers the same command methods as Redis (not a subclass): it is returned
    typed as ``aioredis.Redis`` so that callers need not care which one they hold.
    """
    target = parse_url(url)
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "health_check_interval": 5,
    }
    if target.scheme in PLAIN:
        return aioredis.Redis.from_url(url, retry_on_timeout=False, **common)
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
            **common,
        )
        return master
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
        username=target.username,
        password=target.password,
        **common,
    )
    return cast(aioredis.Redis, cluster)


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
