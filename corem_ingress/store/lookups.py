"""Credential lookups, batched: the concurrent GETs of the resolver become a few MGETs.

Every lookup key carries the registry's hash tag, so on a cluster one MGET serves any
batch. What this buys under a burst (issue 12 §2):

* lookups wait for a batch, not for a pooled connection: 800 lookups of random keys cost
  a handful of MGETs, and the legitimate first lookups in the same burst ride in the same
  batches instead of queueing behind them;
* identical lookups in flight share one read (a reconnect storm of one device, or many
  requests presenting the same key);
* every caller waits at most ``timeout_s``: past it the lookup fails as unavailable,
  whatever Redis or the pool do.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import redis.exceptions

from corem_ingress.store.connection import UNAVAILABLE_ERRORS, KeyedCommands


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
        if future is None:
            future = asyncio.get_running_loop().create_future()
            # Retrieved here, so that an error nobody waits for any more is not reported.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._pending[key] = future
            self._queue.append(key)
            self._dispatch()
        else:
            self.coalesced += 1
        try:
            # Shielded: a caller that gives up must not cancel the others' shared answer.
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError:
            raise LookupTimeout(f"no answer within {self.timeout_s}s") from None

    def _dispatch(self) -> None:
        while self._queue and self._in_flight < self._max_in_flight:
            n = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            self._in_flight += 1
            task = asyncio.ensure_future(self._read(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read(self, batch: list[str]) -> None:
        outcome: list[Any] | BaseException
        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    outcome = await self._commands.execute(batch[0], "MGET", *batch)
                except redis.exceptions.ConnectionError:
                    # A pooled connection that died with a Redis restart fails once; the read
                    # is idempotent: one retry on a fresh connection tells "restarted" from "down".
                    outcome = await self._commands.execute(batch[0], "MGET", *batch)
        except TimeoutError:
            outcome = LookupTimeout(f"no answer within {self.timeout_s}s")
        except UNAVAILABLE_ERRORS as exc:
            outcome = exc
        except redis.exceptions.RedisError as exc:
            outcome = exc
        finally:
            self._in_flight -= 1
            self.batches += 1
        for i, key in enumerate(batch):
            future = self._pending.pop(key, None)
            if future is None or future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                value = outcome[i]
                future.set_result(None if value is None else str(value))
        self._dispatch()
