"""Redis SIGKILLed and restarted under load, for any transport: what devices got
acknowledged vs what the stream holds.

Real clients (one ``Driver`` session per device) send numbered uplinks back to back to a
node on a durable redis-server (AOF, fsync on every write); a message not acknowledged is
sent again (after 0.1 s, on a new session if the server ended it). Redis is SIGKILLed,
stays down about 1.5 s and restarts on the same port and data.

While it is down: nothing is acknowledged; the node's dependency checks say Redis is down
(``/readyz`` reports it degraded); a device the resolver's cache cannot vouch for
(provisioned, never seen by the node) and a credential that was never provisioned are both
refused with the protocol's "unavailable" answer (fail closed: not "unknown", Redis cannot
say), counted as ``corem_auth_failures_total{reason="unavailable"}`` and not held against
the address by the failed-authentication throttle. Once it is back: the bus resyncs (the gap
is noticed), the checks are healthy again, the uncached device gets in and the load
resumes, all by itself.
Checked: no acknowledged uplink is lost, and the stream holds only what devices sent
(at least once: a message whose append reached the AOF at the kill but whose reply was
lost is sent again and stored twice). The figures are printed (``pytest -s``) for
docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

from corem_ingress import metrics
from corem_ingress.core.causes import Cause
from corem_ingress.embedded_redis import EmbeddedRedis
from tests.behaviour.drivers.base import Device, Driver, Refused, Session

DEVICES = 5
#: Acknowledged uplinks per device before the kill, and again after the restart.
WARM_UP = 10
DOWN_S = 1.5


@dataclass
class Load:
    """One device: uplink n until acknowledged, then n + 1; reconnect when ended."""

    driver: Driver
    device: Device
    acked: list[int] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    connects: int = 0
    failed_connects: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        session: Session | None = None
        try:
            while not stop.is_set():
                if session is None:
                    try:
                        session = await self.driver.connect(self.device, timeout=3)
                    except Refused:
                        self.failed_connects += 1
                        await asyncio.sleep(0.1)
                        continue
                    self.connects += 1
                outcome = await session.uplink(n, timeout=2)
                if outcome.acked:
                    self.acked.append(n)
                    n += 1
                    continue
                self.answers[outcome.answer] += 1
                if outcome.closed:
                    await session.close()
                    session = None
                else:
                    await asyncio.sleep(0.1)  # the protocol's retry-after is longer: impatient
        finally:
            if session is not None:
                await session.close()


def auth_failures_unavailable(transport: str) -> float:
    labels = {"transport": transport, "reason": Cause.UNAVAILABLE.label}
    return metrics.REGISTRY.get_sample_value("corem_auth_failures_total", labels) or 0.0


async def connect_answer(driver: Driver, device: Device) -> str:
    """'accepted', or the refusal's answer."""
    try:
        session = await driver.connect(device, timeout=5)
    except Refused as refused:
        return refused.answer
    await session.close()
    return "accepted"


async def scenario(driver: Driver, redis: EmbeddedRedis) -> None:
    node = await driver.start(redis={"url": redis.url, "socket_timeout_s": 0.5})
    assert node.services is not None and node.bus is not None
    loads = [Load(driver, await driver.provision()) for _ in range(DEVICES)]
    fresh = await driver.provision()

    def acked() -> int:
        return sum(len(ld.acked) for ld in loads)

    async def until_acked(count: int) -> None:
        async with asyncio.timeout(30):
            while acked() < count:
                await asyncio.sleep(0.05)

    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(ld.run(stop)) for ld in loads]
    try:
        await until_acked(WARM_UP * DEVICES)
        unavailable_before = auth_failures_unavailable(driver.metric_transport)
        resyncs_before = node.bus.resyncs
        assert redis.proc is not None
        redis.proc.kill()  # SIGKILL: no shutdown, no final fsync
        redis.proc.wait(timeout=5)
        killed_at = time.monotonic()
        await asyncio.sleep(0.3)  # what was in flight at the kill is answered by now
        acked_at_kill = acked()
        # Credentials the cache cannot vouch for, while Redis is down: refused.
        fresh_while_down = await connect_answer(driver, fresh)
        unknown_while_down = await connect_answer(driver, driver.unknown())
        unavailable_refusals = auth_failures_unavailable(driver.metric_transport)
        unavailable_refusals -= unavailable_before
        throttled_sources = len(node.services.access.throttle)
        checks_while_down = await node.ready_checks()
        await asyncio.sleep(max(0.0, DOWN_S - (time.monotonic() - killed_at)))
        acked_while_down = acked() - acked_at_kill
        await asyncio.to_thread(redis.start)  # same port, same AOF
        restarted_at, at_restart = time.monotonic(), acked()
        # Both by themselves: the first acknowledgement, and healthy checks (bus re-subscribed).
        resumed_after = healthy_after = -1.0
        async with asyncio.timeout(30):
            while resumed_after < 0 or healthy_after < 0:
                since = time.monotonic() - restarted_at
                if resumed_after < 0 and acked() > at_restart:
                    resumed_after = since
                if healthy_after < 0 and all((await node.ready_checks()).values()):
                    healthy_after = since
                await asyncio.sleep(0.02)
        await until_acked(at_restart + WARM_UP * DEVICES)
        fresh_after = await connect_answer(driver, fresh)
        stop.set()
        async with asyncio.timeout(20):
            await asyncio.gather(*tasks)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)

    marks = [m for m in await driver.stored() if m[1] >= 0 and m[0] != fresh.device_id]
    stored = set(marks)
    sent = {(ld.device.device_id, n) for ld in loads for n in ld.acked}
    lost = sent - stored
    # Each device sends n + 1 only once n is acknowledged: it may have tried one more.
    tried = sent | {(ld.device.device_id, len(ld.acked)) for ld in loads}
    answers = sum((ld.answers for ld in loads), Counter[str]())
    print(
        f"\nredis SIGKILL under {driver.name} load: devices={DEVICES} acked={len(sent)} "
        f"stored={len(marks)} unique_stored={len(stored)} lost={len(lost)} "
        f"not_acked={dict(answers)} acked_while_down={acked_while_down} "
        f"down_for={restarted_at - killed_at:.2f}s healthy_after_restart={healthy_after:.2f}s "
        f"resumed_after_restart={resumed_after:.2f}s "
        f"resyncs={node.bus.resyncs - resyncs_before} "
        f"reconnects={sum(ld.connects for ld in loads) - DEVICES} "
        f"failed_connects={sum(ld.failed_connects for ld in loads)} "
        f"uncached_while_down={fresh_while_down!r} unknown_while_down={unknown_while_down!r} "
        f"uncached_after={fresh_after!r} auth_failures_unavailable={unavailable_refusals:.0f} "
        f"throttle_sources_while_down={throttled_sources}"
    )
    assert lost == set()
    assert stored <= tried
    assert acked_while_down == 0
    assert set(answers) <= driver.retry_answers, answers
    assert checks_while_down["redis"] is False
    assert node.bus.resyncs > resyncs_before  # the gap was noticed: cache dropped, re-validated
    assert fresh_while_down == unknown_while_down == driver.refusal(Cause.UNAVAILABLE)
    assert unavailable_refusals >= 2
    assert throttled_sources == 0
    assert fresh_after == "accepted"
