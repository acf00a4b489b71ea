"""Limits that hold for the whole deployment: each node shares, through Redis, its live
connections per tenant and the auth blocks it starts, and applies the others'.

Every ``interval`` a node writes its counts to its own hash (expiring after three
intervals), marks itself alive in a sorted set, reads the live nodes' hashes into
``TenantConnections`` and applies new blocks from the shared block set to its
``AuthThrottle``. Figures are at most one interval old: a burst of connections across
nodes within one interval can pass the tenant limit by that much. If Redis is
unreachable each node keeps enforcing its own counts (authentication fails closed anyway).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import redis.exceptions
import structlog

from corem_ingress.core.limits import TenantConnections
from corem_ingress.core.throttle import AuthThrottle
from corem_ingress.store.keys import KeySchema
from corem_ingress.tasks import still_running

log = structlog.get_logger("corem.limits")


class LimitsSync:
    def __init__(
        self,
        redis: Any,
        keys: KeySchema,
        node_id: str,
        tenant_connections: TenantConnections,
        throttle: AuthThrottle,
        *,
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._r = redis
        self._keys = keys
        self._node = node_id
        self._conns = tenant_connections
        self._throttle = throttle
        self.interval_s = interval_s
        self._clock = clock
        self.rounds = 0

    async def run(self) -> None:
        while still_running():
            try:
                await self.sync_once()
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning("limits.sync_failed", error=str(exc))
            await asyncio.sleep(self.interval_s)

    async def sync_once(self) -> None:
        now = self._clock()
        keys = self._keys
        stale = now - 3 * self.interval_s
        # Share this node's figures.
        mine = keys.limits_connections(self._node)
        counts = self._conns.local_counts()
        await self._r.delete(mine)
        if counts:
            await self._r.hset(mine, mapping={t: str(n) for t, n in counts.items()})
            await self._r.pexpire(mine, max(1, int(3 * self.interval_s * 1000)))
        await self._r.zadd(keys.limits_nodes, {self._node: now})
        for source, until in self._throttle.drain_new_blocks():
            await self._r.zadd(keys.limits_blocks, {source: until})
        # Apply the others'.
        await self._r.zremrangebyscore(keys.limits_nodes, "-inf", stale)
        others: dict[str, int] = {}
        for node in await self._r.zrangebyscore(keys.limits_nodes, stale, "+inf"):
            if node == self._node:
                continue
            for tenant, n in (await self._r.hgetall(keys.limits_connections(node))).items():
                others[tenant] = others.get(tenant, 0) + int(n)
        self._conns.set_others(others)
        await self._r.zremrangebyscore(keys.limits_blocks, "-inf", now)
        for source, until in await self._r.zrangebyscore(
            keys.limits_blocks, now, "+inf", withscores=True
        ):
            self._throttle.block_until(str(source), float(until))
        self.rounds += 1
