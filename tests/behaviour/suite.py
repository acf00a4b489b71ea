"""The behaviour every device transport shows, written once (aiocoap's TestServer style).

A transport joins with one class in ``test_transports.py``::

    class TestHttp(BehaviourSuite):
        driver = HttpDriver

and its driver (``drivers/``) says how that transport connects, sends and answers.
The behaviours: authenticate (valid accepted, unknown and revoked refused with the
protocol's answer); an uplink is acknowledged only once it is stored, and not at all
while it cannot be stored; revocation ends live sessions within a bound; malformed
input gets the protocol's answer and stores nothing; and Redis SIGKILLed under load
loses nothing acknowledged (``redis_killed.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from corem_ingress.core.causes import Cause
from corem_ingress.embedded_redis import EmbeddedRedis
from tests.behaviour import redis_killed
from tests.behaviour.drivers.base import Driver, Refused
from tests.behaviour.redis_control import blocked_clients, write_held, writes_paused

#: Revocation must end a live session within this (it takes milliseconds on loopback).
REVOKE_BOUND_S = 5.0


class BehaviourSuite:
    driver: ClassVar[type[Driver]]

    @pytest.fixture
    async def drv(self, request: pytest.FixtureRequest, start_node: Any) -> AsyncIterator[Driver]:
        fixtures = {name: request.getfixturevalue(name) for name in self.driver.fixtures}
        driver = self.driver(start_node, fixtures)
        yield driver
        await driver.close()

    # -- authenticate --------------------------------------------------------------------------
    async def test_valid_credential_is_accepted_unknown_and_revoked_refused(
        self, drv: Driver
    ) -> None:
        await drv.start()
        dev = await drv.provision()
        session = await drv.connect(dev)
        assert (await session.uplink(1)).acked
        with pytest.raises(Refused) as unknown:
            await drv.connect(drv.unknown())
        assert unknown.value.answer == drv.refusal(Cause.UNKNOWN_OR_REVOKED), unknown.value
        await session.close()
        await drv.revoke(dev)
        with pytest.raises(Refused) as revoked:
            await drv.connect(dev)
        assert revoked.value.answer == drv.refusal(Cause.UNKNOWN_OR_REVOKED), revoked.value
        print(f"\n{drv.name}: unknown -> {unknown.value}; revoked -> {revoked.value}")
        assert [m for m in await drv.stored() if m[1] >= 0] == [(dev.device_id, 1)]

    # -- uplinks -------------------------------------------------------------------------------
    async def test_uplink_is_acknowledged_only_once_stored(self, drv: Driver, redis: Any) -> None:
        # The node waits out the pause rather than time out (that is the next test).
        await drv.start(redis={"socket_timeout_s": 30.0})
        dev = await drv.provision()
        session = await drv.connect(dev)
        before = await drv.stored()
        baseline = await blocked_clients(redis)
        async with writes_paused(redis):
            sending = asyncio.ensure_future(session.uplink(7, timeout=30))
            await write_held(redis, baseline)  # the node's append waits in Redis
            await asyncio.sleep(0.2)  # time for an early acknowledgement to arrive, if any
            assert not sending.done(), sending.result()
            assert await drv.stored() == before
        outcome = await sending
        assert outcome.acked, outcome
        assert await drv.stored() == [*before, (dev.device_id, 7)]

    async def test_uplink_is_not_acknowledged_while_it_cannot_be_stored(
        self, drv: Driver, redis: Any
    ) -> None:
        await drv.start(redis={"socket_timeout_s": 0.5})
        dev = await drv.provision()
        session = await drv.connect(dev)
        async with writes_paused(redis):
            refused = await session.uplink(7, timeout=15)
        assert not refused.acked and refused.answer == drv.unstored_answer, refused
        # The device keeps the message and sends it again: acknowledged once stored.
        if refused.closed:
            await session.close()
            session = await drv.connect(dev)
        again = await session.uplink(7)
        assert again.acked, again
        assert (dev.device_id, 7) in await drv.stored()

    # -- revocation ----------------------------------------------------------------------------
    async def test_revoke_ends_live_sessions_within_a_bound(self, drv: Driver) -> None:
        await drv.start()
        dev, bystander = await drv.provision(), await drv.provision()
        session, other = await drv.connect(dev), await drv.connect(bystander)
        started = time.monotonic()
        await drv.revoke(dev)
        ended = await session.ended_by_server(timeout=REVOKE_BOUND_S)
        took = time.monotonic() - started
        print(f"\n{drv.name}: revoke -> {ended} after {took * 1000:.0f} ms")
        assert ended == drv.revoked_answer
        assert (await other.uplink(1)).acked  # other devices keep their sessions
        with pytest.raises(Refused):
            await drv.connect(dev)

    # -- bad input -----------------------------------------------------------------------------
    async def test_bad_input_gets_the_protocols_answer_and_stores_nothing(
        self, drv: Driver
    ) -> None:
        await drv.start()
        dev = await drv.provision()
        before = await drv.stored()
        assert await drv.bad_input(dev) == drv.bad_input_answers
        after = await drv.stored()
        assert [m for m in after if m not in before and m[1] >= 0] == []
        # The listener keeps serving.
        session = await drv.connect(dev)
        assert (await session.uplink(2)).acked

    # -- Redis killed under load ---------------------------------------------------------------
    async def test_redis_killed_under_load_loses_nothing_acknowledged(
        self, drv: Driver, durable_redis: EmbeddedRedis, tmp_path: Path
    ) -> None:
        await redis_killed.scenario(drv, durable_redis)
