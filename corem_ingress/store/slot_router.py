"""The request path on a Redis Cluster: each command to its slot's master, nodes isolated.

Why not redis-py's ``RedisCluster`` here (checked in redis-py 8.1,
``redis/asyncio/cluster.py``): one client is shared by every slot, and an error on *any*
node resets it for all of them. A ConnectionError or TimeoutError sets ``_initialize``, so
the next command on any slot first re-reads the topology under the client's lock; a
``ClusterDownError`` or ``SlotNotCoveredError`` calls ``aclose()``, which disconnects every
connection to every node -- commands in flight to healthy masters included -- and sleeps
0.25 s. While the master of one slot was down, tenants whose streams live on healthy
masters got failed appends ("connecting to <dead master>") too.

Here every master has a plain client with its own bounded pool. A command goes to the
master of its key's slot (plus one redirect on MOVED/ASK). When it fails to reach that
master, the topology is read again (``CLUSTER SLOTS`` from another node, at most every
``refresh_interval_s``, and always from after the command was sent: a map read before it
cannot know of a promotion the failure may reveal); a node whose map still names the
failed master (gossip not there yet) is passed over for one that does not. If the slot has
a new master by then (a promoted replica), the command is sent there once, else it fails --
that command only. Nothing here ever closes another node's connections.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from corem_ingress.store.connection import PoolSettings

log = structlog.get_logger("corem.redis")

Address = tuple[str, int]


class SlotNotServed(redis.exceptions.ClusterDownError):
    """No master is known for the slot (counted as unavailable like CLUSTERDOWN)."""


class SlotRouter:
    def __init__(
        self,
        startup: Sequence[Address],
        *,
        pool: PoolSettings,
        username: str | None = None,
        password: str | None = None,
        refresh_interval_s: float = 0.2,
    ) -> None:
        self._startup = list(startup)
        self._pool = pool
        self._auth: dict[str, Any] = {"username": username, "password": password}
        self._refresh_interval_s = refresh_interval_s
        #: Sorted slot-range starts, and for each range its end and master.
        self._starts: list[int] = []
        self._ranges: list[tuple[int, Address]] = []
        self._clients: dict[Address, Any] = {}
        self._refresh_task: asyncio.Task[None] | None = None
        self._refresh_lock = asyncio.Lock()
        self._last_refresh = 0.0
        self.refreshes = 0

    # -- commands ------------------------------------------------------------------------------
    async def execute(self, key: str, *args: Any) -> Any:
        if not self._starts:
            await self.refresh()
        slot = key_slot(key.encode())
        master = self.master_of(slot)
        if master is None:
            self._refresh_soon()
            raise SlotNotServed(f"no master known for slot {slot}")
        sent_at = time.monotonic()
        try:
            try:
                return await self._client(master).execute_command(*args)
            except (
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
                redis.exceptions.ClusterDownError,
                redis.exceptions.TryAgainError,
            ):
                # Failed over? Ask the others (rate-limited); a new master gets one try.
                await self._refresh_quietly(avoid=master, slot=slot, newer_than=sent_at)
                promoted = self.master_of(slot)
                if promoted is None or promoted == master:
                    raise
                return await self._client(promoted).execute_command(*args)
        except redis.exceptions.MovedError as moved:
            target = (moved.host, int(moved.port))
            self._assign(slot, target)
            self._refresh_soon()
            return await self._client(target).execute_command(*args)
        except redis.exceptions.AskError as ask:  # a slot in migration: once, on that node
            pipe = self._client((ask.host, int(ask.port))).pipeline(transaction=False)
            pipe.execute_command("ASKING")
            pipe.execute_command(*args)
            return (await pipe.execute())[1]

    def master_of(self, slot: int) -> Address | None:
        i = bisect.bisect_right(self._starts, slot) - 1
        if i < 0:
            return None
        end, master = self._ranges[i]
        return master if slot <= end else None

    # -- topology ------------------------------------------------------------------------------
    async def refresh(
        self,
        avoid: Address | None = None,
        *,
        slot: int | None = None,
        min_age_s: float = 0.0,
        newer_than: float | None = None,
    ) -> None:
        """Read CLUSTER SLOTS from the first node that answers (``avoid`` asked last), one
        whose map no longer names ``avoid`` for ``slot`` if any does.

        Rate: not more often than every ``min_age_s``. With ``newer_than`` (when the failed
        command was sent), a map read since then is kept (a concurrent failure just
        refreshed it); an older one is refreshed once ``min_age_s`` has passed.
        """
        async with self._refresh_lock:
            if newer_than is not None and self._last_refresh >= newer_than:
                return
            wait = self._last_refresh + min_age_s - time.monotonic()
            if wait > 0:
                if newer_than is None:
                    return
                await asyncio.sleep(wait)  # at most min_age_s, for a command that failed
            known = list(dict.fromkeys([*self._masters(), *self._startup]))
            if avoid in known:
                known.remove(avoid)
                known.append(avoid)
            error: Exception | None = None
            stale: Any = None
            for address in known:
                try:
                    reply = await self._client(address).execute_command("CLUSTER SLOTS")
                except (redis.exceptions.RedisError, OSError) as exc:
                    error = exc
                    continue
                if slot is not None and avoid is not None and _names(reply, slot, avoid):
                    stale = stale or reply  # has not heard of a promotion (yet): ask another
                    continue
                self._loaded(reply)
                return
            if stale is not None:
                self._loaded(stale)
                return
            raise redis.exceptions.ConnectionError(f"no cluster node answered: {error}")

    def _loaded(self, reply: Any) -> None:
        self._load(reply)
        self._last_refresh = time.monotonic()
        self.refreshes += 1

    def _load(self, reply: Any) -> None:
        """Replace the map with a CLUSTER SLOTS reply."""
        ranges = sorted(
            (int(entry[0]), int(entry[1]), (str(entry[2][0]), int(entry[2][1]))) for entry in reply
        )
        self._starts = [start for start, _end, _master in ranges]
        self._ranges = [(end, master) for _start, end, master in ranges]

    def _assign(self, slot: int, master: Address) -> None:
        """What a MOVED said, at once (the refresh that follows confirms the whole map)."""
        i = bisect.bisect_right(self._starts, slot) - 1
        if i >= 0 and slot <= self._ranges[i][0]:
            start, end = self._starts[i], self._ranges[i][0]
            pieces = [(s, e, m) for s, e, m in ((start, slot - 1, self._ranges[i][1]),) if s <= e]
            pieces.append((slot, slot, master))
            if slot < end:
                pieces.append((slot + 1, end, self._ranges[i][1]))
            self._starts[i : i + 1] = [s for s, _e, _m in pieces]
            self._ranges[i : i + 1] = [(e, m) for _s, e, m in pieces]
        else:
            j = bisect.bisect_right(self._starts, slot)
            self._starts.insert(j, slot)
            self._ranges.insert(j, (slot, master))

    def _masters(self) -> list[Address]:
        return [master for _end, master in self._ranges]

    def _refresh_soon(self, avoid: Address | None = None) -> None:
        if self._refresh_task is not None and not self._refresh_task.done():
            return
        self._refresh_task = asyncio.ensure_future(self._refresh_later(avoid))

    async def _refresh_later(self, avoid: Address | None) -> None:
        wait = self._last_refresh + self._refresh_interval_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await self._refresh_quietly(avoid)

    async def _refresh_quietly(
        self, avoid: Address | None, *, slot: int | None = None, newer_than: float | None = None
    ) -> None:
        try:
            await self.refresh(
                avoid, slot=slot, min_age_s=self._refresh_interval_s, newer_than=newer_than
            )
        except redis.exceptions.RedisError as exc:
            log.warning("redis.cluster_refresh_failed", error=str(exc))

    def _client(self, address: Address) -> Any:
        client = self._clients.get(address)
        if client is None:
            p = self._pool
            pool = BlockingConnectionPool(
                host=address[0],
                port=address[1],
                max_connections=p.max_connections,
                timeout=p.wait_s,
                socket_timeout=p.socket_timeout,
                socket_connect_timeout=p.socket_timeout,
                health_check_interval=5,
                decode_responses=True,
                # One attempt: a failure is this command's, and the refresh finds the new master.
                retry=Retry(NoBackoff(), 0),
                **self._auth,
            )
            client = aioredis.Redis.from_pool(pool)
            self._clients[address] = client
        return client

    async def aclose(self) -> None:
        task = self._refresh_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


def _names(reply: Any, slot: int, master: Address) -> bool:
    """Whether a CLUSTER SLOTS reply gives ``slot`` to ``master``."""
    return any(
        int(entry[0]) <= slot <= int(entry[1]) and (str(entry[2][0]), int(entry[2][1])) == master
        for entry in reply
    )
