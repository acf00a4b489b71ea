"""Holding and breaking the node's Redis from a test: writes paused (``CLIENT PAUSE
WRITE``: reads go on, every write waits) and a durable redis-server to SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any


async def blocked_clients(redis: Any) -> int:
    return int((await redis.info("clients"))["blocked_clients"])


@contextlib.asynccontextmanager
async def writes_paused(redis: Any, *, at_most_s: float = 60.0) -> AsyncIterator[None]:
    """Every write to this Redis waits until the block ends (or ``at_most_s``)."""
    await redis.execute_command("CLIENT", "PAUSE", int(at_most_s * 1000), "WRITE")
    try:
        yield
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")


async def write_held(redis: Any, baseline: int, *, timeout: float = 10.0) -> None:
    """Wait (bounded) until one more client than ``baseline`` waits on the pause."""
    async with asyncio.timeout(timeout):
        while await blocked_clients(redis) <= baseline:
            await asyncio.sleep(0.01)
