"""corem_ingress/tasks.py: a retry loop stops when asked, even if its cancel was lost."""

from __future__ import annotations

import asyncio

import pytest

from corem_ingress.tasks import still_running

pytestmark = pytest.mark.unit


async def test_a_loop_stops_even_when_its_cancel_comes_out_as_an_error() -> None:
    rounds = 0

    async def command() -> None:
        # What a client can do when a cancel lands as its own timeout fires: report it as
        # the timeout (redis-py: a TimeoutError, a RedisError the loop retries on).
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            raise OSError("timed out") from None

    async def naive() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            try:
                await command()
            except OSError:
                await asyncio.sleep(0)
            if rounds > 50:
                return  # bound the demonstration: the cancel was lost

    async def guarded() -> None:
        while still_running():
            try:
                await command()
            except OSError:
                await asyncio.sleep(0)

    lost = asyncio.ensure_future(naive())
    await asyncio.sleep(0.005)
    lost.cancel()
    await asyncio.wait_for(lost, 5)
    assert rounds > 50 and not lost.cancelled()  # the pitfall: it kept going

    task = asyncio.ensure_future(guarded())
    await asyncio.sleep(0.005)
    task.cancel()
    await asyncio.wait_for(task, 5)  # ends by itself after one round
    assert still_running()  # the test's own task was never asked to stop
