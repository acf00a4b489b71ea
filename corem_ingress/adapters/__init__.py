"""Transport adapters: bytes/sessions in, DeviceIdentity + Uplink out. No policy, no Redis here.

Each adapter package exposes ``build(services) -> Listener``; app.py starts the
configured ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis

from corem_ingress.config import Config
from corem_ingress.core.limits import DeviceRateLimiter, TenantConnections
from corem_ingress.core.throttle import AuthThrottle
from corem_ingress.resolver import Resolver
from corem_ingress.session_hub import SessionHub
from corem_ingress.store.downlinks import DownlinkPublisher, DownlinkRouter
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry
from corem_ingress.store.uplinks import UplinkStore


@dataclass
class Services:
    """What the app hands to each adapter."""

    config: Config
    node_id: str
    redis: aioredis.Redis
    keys: KeySchema
    registry: Registry
    resolver: Resolver
    sessions: SessionHub
    uplinks: UplinkStore
    #: Local sessions that accept downlinks register a sink here (MQTT, CoAP Observe).
    downlinks: DownlinkRouter
    downlink_publisher: DownlinkPublisher
    clock: Callable[[], float] = field(default=time.time)
    #: Failed-authentication throttling per source IP (shared by every listener of the node):
    #: ``blocked(ip, now)`` before authenticating, ``failure(ip, now)`` on UNAUTHENTICATED,
    #: ``success(ip)`` on success. See corem_ingress/core/throttle.py.
    throttle: AuthThrottle = field(default_factory=AuthThrottle)
    #: Per-device uplink rate limit: ``allow(device_id, now)`` (unlimited unless configured).
    device_rate: DeviceRateLimiter = field(default_factory=DeviceRateLimiter)
    #: Per-tenant live connections on this node: ``acquire(tenant)`` / ``release(tenant)``.
    tenant_connections: TenantConnections = field(default_factory=TenantConnections)


class Listener(Protocol):
    name: str
    #: The bound port once started (the configured one, or the OS's pick for port 0).
    port: int

    async def start(self) -> None: ...

    async def stop(self, deadline: float) -> None:
        """Stop accepting, tell peers to go, finish in-flight work within ``deadline`` seconds."""
        ...
