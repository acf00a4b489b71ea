"""Fixtures for operations tests: in-process nodes on any Redis URL, real Redis topologies."""

from __future__ import annotations

import asyncio

import pytest

from corem_ingress.app import Node
from tests.conftest import make_config
from tests.ops.brokers import brokers, pki  # noqa: F401  (fixtures)


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
