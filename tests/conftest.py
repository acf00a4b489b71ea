"""Shared fixtures: a real redis-server per test session, a clean database per test,
and a broker Node started in-process with listeners on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any
from unittest import mock

import pytest
import redis.asyncio as aioredis

from corem_ingress.app import Node, redis_client
from corem_ingress.core.psk import KeyRing, generate_kek_line
from corem_ingress.core.resolver_cache import ResolverCache
from corem_ingress.embedded_redis import EmbeddedRedis
from corem_ingress.resolver import Resolver
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry

KEK_LINE = generate_kek_line("test1")


if os.environ.get("COREM_TEST_EVENT_LOOP") == "uvloop":

    def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
        """``COREM_TEST_EVENT_LOOP=uvloop``: the in-process tests run on uvloop, as the
        broker does where it is installed (``event_loop: auto``); asyncio's loop otherwise."""
        import uvloop

        return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real redis-server for the whole run (tests flush it, see ``redis``)."""
    server = EmbeddedRedis().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def redis_cluster():  # type: ignore[no-untyped-def]
    """A real local Redis Cluster (3 masters), for the tests of one module."""
    from tests.ops.redis_topologies import RedisClusterProcs

    procs = RedisClusterProcs()
    try:
        yield procs.start()
    finally:
        procs.close()


@pytest.fixture(scope="module")
def redis_sentinel():  # type: ignore[no-untyped-def]
    """A real local Sentinel setup (a master and a sentinel), for the tests of one module."""
    from tests.ops.redis_topologies import RedisSentinelProcs

    procs = RedisSentinelProcs()
    try:
        yield procs.start()
    finally:
        procs.close()


@pytest.fixture
def durable_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A redis-server of the test's own, AOF with fsync on every write: what a production
    Redis for uplinks runs; a test may kill and restart it (same port, same data)."""
    server = EmbeddedRedis(data_dir=tmp_path_factory.mktemp("redis"), persist=True).start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(redis_url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def keys() -> KeySchema:
    return KeySchema("corem")


@pytest.fixture
def keyring() -> KeyRing:
    return KeyRing.parse(KEK_LINE)


@pytest.fixture
def kek_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COREM_PSK_KEK", KEK_LINE)
    return KEK_LINE


class Clock:
    """A controllable clock for code that takes ``clock`` (starts at real time)."""

    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(redis: aioredis.Redis, keys: KeySchema, keyring: KeyRing) -> Registry:
    return Registry(redis, keys, keyring=keyring, api_key_overlap=60, api_key_overlap_max=3600)


@pytest.fixture
def resolver(redis: aioredis.Redis, keys: KeySchema, keyring: KeyRing) -> Resolver:
    cache = ResolverCache(ttl=30, negative_ttl=2, max_entries=10_000)
    return Resolver(redis, keys, cache, keyring=keyring)


#: Fixtures that start a server (redis-server, a node, broker processes). A test marked
#: ``unit`` that needs one, directly or through another fixture, stops the run.
SERVER_FIXTURES = frozenset(
    {"redis_server", "durable_redis", "redis_cluster", "redis_sentinel", "start_node"}
    | {"node_on", "brokers"}
)


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers: a test is ``unit`` only if marked so (pure: no server, no network peer,
    runs in seconds); every other test is ``integration``. A ``unit`` test that needs a
    server fixture is a usage error, reported for all such tests at once."""
    # Tests that need binaries the machine lacks fail loudly rather than skip: CI installs them.
    os.environ.setdefault("COREM_LOGGING_FORMAT", "console")
    wrong = []
    for item in items:
        if item.get_closest_marker("unit") is None:
            item.add_marker(pytest.mark.integration)
            continue
        servers = sorted(SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())))
        if servers or item.get_closest_marker("integration") is not None:
            wrong.append(f"{item.nodeid}: marked unit, needs {servers or 'integration'}")
    if wrong:
        raise pytest.UsageError("unit tests start no server:\n" + "\n".join(wrong))


#: Programs a unit test may not start (a server, or a broker node).
SERVER_PROGRAMS = frozenset({"redis-server", "redis-sentinel", "nginx", "mosquitto"})
_real_popen = subprocess.Popen


def _popen_no_servers(args: Any, *rest: Any, **kwargs: Any) -> Any:
    argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
    argv = [os.fsdecode(a) for a in argv]
    program = os.path.basename(argv[0]) if argv else ""
    if program in SERVER_PROGRAMS or argv[1:3] == ["-m", "corem_ingress"]:
        raise RuntimeError(f"a test marked unit started {program}: mark it integration")
    return _real_popen(args, *rest, **kwargs)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    # The belt to the collection check's braces: any fixture (session-scoped ones are set
    # up here, for the first test that needs them), helper or test body that starts a
    # server process (EmbeddedRedis, asyncio subprocesses and subprocess.run go through
    # subprocess.Popen).
    with _no_servers_if_unit(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _no_servers_if_unit(item):
        yield


def _no_servers_if_unit(item: pytest.Item) -> contextlib.AbstractContextManager[object]:
    if item.get_closest_marker("unit") is None:
        return contextlib.nullcontext()
    return mock.patch.object(subprocess, "Popen", _popen_no_servers)


def make_config(redis_url: str, **sections: dict[str, object]):  # type: ignore[no-untyped-def]
    """A Config for an in-process node: given Redis, every port 0 (OS-chosen), console logs."""
    from corem_ingress.config import Config

    cfg = Config()
    cfg.redis.url = redis_url
    cfg.health.port = 0
    cfg.http.port = 0
    cfg.mqtt.port = 0
    cfg.coap.port = 0
    cfg.logging.format = "console"
    cfg.shutdown_deadline_s = 3.0
    # Unique per node: several in-process nodes must not share an id (hostname-pid would).
    import uuid

    cfg.node_id = f"test-{uuid.uuid4().hex[:8]}"
    for section, values in sections.items():
        target = getattr(cfg, section)
        for key, value in values.items():
            setattr(target, key, value)
    cfg.validate()
    return cfg


@pytest.fixture
async def node_on(kek_env: str):  # type: ignore[no-untyped-def]
    """Factory: ``await node_on(redis_url, **sections)`` -> a started Node (no listeners)."""
    nodes: list[Node] = []

    async def start(url: str, **sections: dict[str, object]) -> Node:
        node = Node(make_config(url, **sections), listener_factories=[])
        nodes.append(node)
        await node.start()
        assert node.bus is not None
        async with asyncio.timeout(15):
            await node.bus.subscribed.wait()
        return node

    yield start
    for node in reversed(nodes):
        await node.stop()


@pytest.fixture
async def start_node(redis: aioredis.Redis, redis_url: str, kek_env: str):  # type: ignore[no-untyped-def]
    """Factory: ``await start_node(factories, **sections)`` -> a started Node (stopped after)."""
    from corem_ingress.app import Node

    nodes = []

    async def start(factories, clock=None, **sections):  # type: ignore[no-untyped-def]
        cfg = make_config(redis_url, **sections)
        kwargs = {"listener_factories": list(factories)}
        if clock is not None:
            kwargs["clock"] = clock
        node = Node(cfg, **kwargs)
        nodes.append(node)
        await node.start()
        await node.bus.subscribed.wait()
        return node

    yield start
    for node in reversed(nodes):
        await node.stop()
