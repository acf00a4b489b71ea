"""What the node hands to each adapter: the resolver, the session hub, the store objects
and the limits. Adapters never see a raw Redis client: they get store objects (or build
them through ``Stores``), so every Redis access goes through ``corem_ingress.store``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from corem_ingress.config import Config
from corem_ingress.core.access import AccessPolicy
from corem_ingress.resolver import Resolver
from corem_ingress.session_hub import SessionHub
from corem_ingress.store.downlinks import DownlinkPublisher, DownlinkRouter
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.lwm2m import Handler, Lwm2mRequestServer, Lwm2mRouter, Lwm2mStore
from corem_ingress.store.registry import Registry
from corem_ingress.store.uplink_batcher import UplinkBatcher
from corem_ingress.store.uplinks import UplinkStore


class Stores:
    """Builds the store objects an adapter needs, on the node's one Redis client."""

    def __init__(self, redis: aioredis.Redis, keys: KeySchema) -> None:
        self._redis = redis
        self._keys = keys

    def uplink_batcher(self, on_batch_done: Callable[[], None] | None = None) -> UplinkBatcher:
        return UplinkBatcher(self._redis, self._keys, on_batch_done=on_batch_done)

    def lwm2m_store(self, *, grace_s: int, clock: Callable[[], float]) -> Lwm2mStore:
        return Lwm2mStore(self._redis, self._keys, grace_s=grace_s, clock=clock)

    def lwm2m_router(self, *, clock: Callable[[], float]) -> Lwm2mRouter:
        return Lwm2mRouter(self._redis, self._keys, clock=clock)

    def lwm2m_request_server(
        self, node_id: str, handler: Handler, *, clock: Callable[[], float]
    ) -> Lwm2mRequestServer:
        return Lwm2mRequestServer(self._redis, self._keys, node_id, handler, clock=clock)


@dataclass
class Services:
    """What the app hands to each adapter."""

    config: Config
    node_id: str
    stores: Stores
    registry: Registry
    resolver: Resolver
    sessions: SessionHub
    uplinks: UplinkStore
    #: Local sessions that accept downlinks register a sink here (MQTT, CoAP Observe).
    downlinks: DownlinkRouter
    downlink_publisher: DownlinkPublisher
    clock: Callable[[], float] = field(default=time.time)
    #: The node's limits (failed-auth throttle per source, per-tenant connection slots,
    #: per-device message rate), one policy for every transport: ``core/access.py``;
    #: adapters use it through ``access_gate.AccessGate``.
    access: AccessPolicy = field(default_factory=AccessPolicy)
