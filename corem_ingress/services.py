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
from corem_ingress.store.audit_log import AuditLog
from corem_ingress.store.cid_nodes import CidNodeDirectory
from corem_ingress.store.clients import RedisClients
from corem_ingress.store.device_sessions import DeviceSessions
from corem_ingress.store.downlinks import DownlinkPublisher, DownlinkRouter
from corem_ingress.store.dtls_sessions import DtlsSessionStore
from corem_ingress.store.firmware import FirmwareStore
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.lwm2m import Handler, Lwm2mRequestServer, Lwm2mRouter, Lwm2mStore
from corem_ingress.store.lwm2m_events import Lwm2mEventLog
from corem_ingress.store.lwm2m_queue import Lwm2mQueue
from corem_ingress.store.registry import Registry
from corem_ingress.store.sessions_index import SessionsIndex
from corem_ingress.store.uplink_batcher import UplinkBatcher
from corem_ingress.store.uplinks import UplinkStore


class Stores:
    """Builds the store objects an adapter needs, each on the node's pool for its class of
    traffic (``store/clients.py``); request-path waits are bounded by ``timeout_s``."""

    def __init__(self, clients: RedisClients, keys: KeySchema, *, timeout_s: float) -> None:
        self._clients = clients
        self._redis: aioredis.Redis = clients.background
        self._keys = keys
        self.timeout_s = timeout_s

    def uplink_batcher(self, on_batch_done: Callable[[], None] | None = None) -> UplinkBatcher:
        plain = self._clients.uplinks_client
        if plain is not None:
            return UplinkBatcher(
                plain, self._keys, on_batch_done=on_batch_done, timeout_s=self.timeout_s
            )
        return UplinkBatcher(  # a cluster: per-stream lanes through the slot router
            self._clients.admin,
            self._keys,
            on_batch_done=on_batch_done,
            keyed=self._clients.uplinks,
            timeout_s=self.timeout_s,
        )

    def sessions_index(self, *, interval_s: float, clock: Callable[[], float]) -> SessionsIndex:
        return SessionsIndex(self._clients.admin, self._keys, interval_s=interval_s, clock=clock)

    def audit_log(self) -> AuditLog:
        return AuditLog(self._clients.admin, self._keys)

    def uplink_tail(self) -> UplinkStore:
        """Uplink reads that block (``XREAD BLOCK``), on their own pool."""
        client = self._clients.streams or self._clients.admin
        return UplinkStore(client, self._keys, timeout_s=self.timeout_s)

    def cid_nodes(self) -> CidNodeDirectory:
        return CidNodeDirectory(self._redis, self._keys)

    def dtls_sessions(
        self, *, lifetime_s: int, rotation_s: int, clock: Callable[[], float]
    ) -> DtlsSessionStore:
        return DtlsSessionStore(
            self._redis, self._keys, lifetime_s=lifetime_s, rotation_s=rotation_s, clock=clock
        )

    def lwm2m_store(self, *, grace_s: int, clock: Callable[[], float]) -> Lwm2mStore:
        return Lwm2mStore(self._redis, self._keys, grace_s=grace_s, clock=clock)

    def lwm2m_router(self, *, clock: Callable[[], float]) -> Lwm2mRouter:
        return Lwm2mRouter(self._redis, self._keys, clock=clock)

    def lwm2m_queue(self, *, clock: Callable[[], float]) -> Lwm2mQueue:
        return Lwm2mQueue(self._redis, self._keys, clock=clock)

    def firmware(self, *, clock: Callable[[], float]) -> FirmwareStore:
        return FirmwareStore(self._redis, self._keys, clock=clock)

    def lwm2m_events(self) -> Lwm2mEventLog:
        return Lwm2mEventLog(self._redis, self._keys)

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
    #: Devices' sessions and offline downlink queues in Redis (MQTT persistent sessions,
    #: CoAP observers of ``/down``).
    device_sessions: DeviceSessions
    clock: Callable[[], float] = field(default=time.time)
    #: The node's limits (failed-auth throttle per source, per-tenant connection slots,
    #: per-device message rate), one policy for every transport: ``core/access.py``;
    #: adapters use it through ``access_gate.AccessGate``.
    access: AccessPolicy = field(default_factory=AccessPolicy)
