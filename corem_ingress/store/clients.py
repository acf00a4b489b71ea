"""A node's Redis clients: one bounded, blocking pool per class of traffic.

Classes, so that none can starve another (issue 12 §2: 200 admin reads once took all 100
connections of a shared pool, and devices got 503 while Redis answered PING):

* ``lookups`` -- the resolver's credential lookups (request path, batched MGETs);
* ``uplinks`` -- uplink appends (request path);
* ``admin`` -- the admin API's registry reads and writes, audit records, downlinks;
* ``background`` -- the revocation bus, the shared limits, LwM2M routing, health checks;
* ``sessions`` -- device sessions and their downlink queues (a reconnect storm must not
  take the bus's connections).

On a Redis Cluster the two request-path classes use the per-node slot router
(``store/slot_router.py``), so a master that fails holds up only its own slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from corem_ingress.store.connection import (
    ClientCommands,
    KeyedCommands,
    PoolSettings,
    keyed_commands,
    redis_client,
)


@dataclass
class RedisClients:
    admin: aioredis.Redis
    background: aioredis.Redis
    lookups: KeyedCommands
    uplinks: KeyedCommands
    sessions: aioredis.Redis
    #: Live uplink tails (SSE, ``XREAD BLOCK``): their own pool, so that a blocked read never
    #: holds a connection another class needs.
    streams: aioredis.Redis | None = None

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        socket_timeout_s: float,
        max_connections: int,
        admin_max_connections: int,
        pool_wait_s: float,
        admin_pool_wait_s: float,
        streams_max_connections: int = 32,
    ) -> RedisClients:
        def pool(size: int, wait_s: float = pool_wait_s, retry: bool = False) -> PoolSettings:
            return PoolSettings(socket_timeout_s, size, wait_s, retry)

        # The admin and background pools are idle for long stretches: their connections are
        # the ones a Redis restart leaves dead, so they retry once (the registry's writes are
        # single scripts; a repeat needs a reply lost *after* execution and a server back at
        # once). The request path retries its reads itself and never repeats an append.
        return cls(
            admin=redis_client(url, pool=pool(admin_max_connections, admin_pool_wait_s, True)),
            background=redis_client(url, pool=pool(max_connections, retry=True)),
            lookups=keyed_commands(url, pool(max_connections)),
            uplinks=keyed_commands(url, pool(max_connections)),
            streams=redis_client(url, pool=pool(streams_max_connections)),
            sessions=redis_client(url, pool=pool(max_connections)),
        )

    @property
    def uplinks_client(self) -> aioredis.Redis | None:
        """The plain (or Sentinel) client of the uplinks pool; None on a cluster."""
        return self.uplinks.client if isinstance(self.uplinks, ClientCommands) else None

    async def aclose(self) -> None:
        for keyed in (self.lookups, self.uplinks):
            await keyed.aclose()
        await self.admin.aclose()
        await self.background.aclose()
        if self.streams is not None:
            await self.streams.aclose()
        await self.sessions.aclose()
