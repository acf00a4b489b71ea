"""Credential lookups, batched: the concurrent GETs of the resolver become a few MGETs.

Every lookup key carries the registry's hash tag, so on a cluster one MGET serves any
batch. What this buys under a burst (issue 12 §2):

* lookups wait for a batch, not for a pooled connection: 800 lookups of random keys cost
  a handful of MGETs, and the legitimate first lookups in the same burst ride in the same
  batches instead of queueing behind them;
* identical lookups in flight share one read (a reconnect storm of one device, or many
  requests presenting the same key);
* every caller waits at most ``timeout_s`` (the node's ``redis.socket_timeout_s``): past it
  the lookup fails as unavailable, whatever Redis or the pool do. On a plain or Sentinel
  client a read is bounded by the client's own socket timeouts (connect, reply: the same
  value), and at most ``max_in_flight`` reads -- fewer than the pool's connections -- never
  wait for the pool; on a cluster the router may re-read the topology and retry, so the
  read is bounded explicitly (an extra timer per read, which a lone miss on a single server
  does not pay: it would cost it ~10 % against a raw GET, see bench/resolver.py).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import redis.exceptions

from corem_ingress.store.connection import UNAVAILABLE_ERRORS, ClientCommands, KeyedCommands

_ERRORS: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, redis.exceptions.RedisError)


class LookupTimeout(redis.exceptions.TimeoutError):
    """A lookup's answer did not come within its bound."""


class LookupBatcher:
    def __init__(
        self,
        commands: KeyedCommands,
        *,
        timeout_s: float,
        max_batch: int = 256,
        max_in_flight: int = 4,
    ) -> None:
        if timeout_s <= 0 or max_batch < 1 or max_in_flight < 1:
            raise ValueError("timeout_s > 0, max_batch >= 1, max_in_flight >= 1")
        self._commands = commands
        self.timeout_s = timeout_s
        #: Whether each read needs its own timer (see the module's docstring).
        self._bound_reads = not isinstance(commands, ClientCommands)
        #: A plain client's own method when there is one: one coroutine frame less per miss.
        self._client: Any = commands.client if isinstance(commands, ClientCommands) else None
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: deque[str] = deque()
        #: One future per key queued or in flight: identical lookups share it.
        self._pending: dict[str, asyncio.Future[str | None]] = {}
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.coalesced = 0

    async def get(self, key: str) -> str | None:
        """The value of ``key`` (None: no such key); raises a Redis error when unavailable."""
        future = self._pending.get(key)
        if future is not None:
            self.coalesced += 1
            return await self._wait(future)
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        self._queue.append(key)
        if self._in_flight < self._max_in_flight:
            # A free slot: read in this task (a lone miss costs what one GET costs); keys that
            # arrive meanwhile join the next batch, or this very future if identical.
            await self._read(self._take())
        return await self._wait(future)

    async def read(self, key: str, *args: Any) -> Any:
        """One other read-only command about ``key`` (e.g. a tenant's CAs), on the same
        client and under the same bound as the lookups; retried once on a dead connection."""
        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    return await self._commands.execute(key, *args)
                except redis.exceptions.ConnectionError:
                    return await self._commands.execute(key, *args)
        except TimeoutError:
            raise LookupTimeout(f"no answer within {self.timeout_s}s") from None

    async def _wait(self, future: asyncio.Future[str | None]) -> str | None:
        if future.done():
            return future.result()
        try:
            # Shielded: a caller that gives up must not cancel the others' shared answer.
            async with asyncio.timeout(self.timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            raise LookupTimeout(f"no answer within {self.timeout_s}s") from None

    def _take(self) -> list[str]:
        self._in_flight += 1
        queue = self._queue
        if len(queue) == 1:
            return [queue.popleft()]
        return [queue.popleft() for _ in range(min(len(queue), self._max_batch))]

    def _dispatch(self) -> None:
        """Batches for the keys that queued while every slot was busy, each in a task."""
        while self._queue and self._in_flight < self._max_in_flight:
            task = asyncio.ensure_future(self._read(self._take()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read(self, batch: list[str]) -> None:
        """One read for ``batch``; settles every future of it, whatever happens (cancelled
        included), then frees its slot."""
        outcome: list[Any] | BaseException | None = None
        try:
            outcome = await self._mget(batch)
        finally:
            self._in_flight -= 1
            self.batches += 1
            if outcome is None:  # cancelled while reading
                outcome = LookupTimeout("the read was cancelled")
            for i, key in enumerate(batch):
                future = self._pending.pop(key, None)
                if future is None or future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                    future.exception()  # retrieved: no warning if every waiter gave up
                else:
                    value = outcome[i]
                    future.set_result(None if value is None else str(value))
            if self._queue:
                self._dispatch()

    async def _mget(self, batch: list[str]) -> list[Any] | BaseException:
        try:
            if not self._bound_reads:
                return await self._twice(batch)
            async with asyncio.timeout(self.timeout_s):
                return await self._twice(batch)
        except TimeoutError:
            return LookupTimeout(f"no answer within {self.timeout_s}s")
        except _ERRORS as exc:
            return exc

    async def _twice(self, batch: list[str]) -> list[Any]:
        # The common case off a burst is one key: GET's reply is the cheaper one.
        one = len(batch) == 1
        args = ("GET", batch[0]) if one else ("MGET", *batch)
        try:
            reply = await self._send(batch[0], args)
        except redis.exceptions.ConnectionError:
            # A pooled connection that died with a Redis restart fails at once; the read is
            # idempotent: one retry on a fresh connection tells "restarted" from "down".
            reply = await self._send(batch[0], args)
        return [reply] if one else list(reply)

    def _send(self, key: str, args: tuple[str, ...]) -> Any:
        """The command's awaitable: the plain client's own (a frame less), or the router's."""
        if self._client is not None:
            return self._client.execute_command(*args)
        return self._commands.execute(key, *args)
