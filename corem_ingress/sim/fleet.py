"""The fleet runner: ramps devices up, sends at a fixed rate, revokes a fraction, reports.

Bounded in count (``devices``) and time (``duration`` plus a fixed grace). Every
figure comes from what the devices observed (acks, closes, refusals), never from
the broker's own counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from corem_ingress.sim.stats import FleetStats


class DeviceError(Exception):
    """A failure as a device sees it; ``cause`` is a short, stable label (e.g. "refused"),
    ``detail`` what the device was told or saw (an alert, a status, a timeout's meaning)."""

    def __init__(self, cause: str, detail: str = "") -> None:
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause = cause
        self.detail = detail

    @property
    def label(self) -> str:
        """How the run's ``errors`` count it: the cause, with its reason when there is one."""
        return f"{self.cause} ({self.detail})" if self.detail else self.cause


#: A run stops early when this many devices (or all of them, if fewer) failed to connect
#: and none connected: the broker is not reachable, or refuses every device.
STOP_AFTER_FAILED_CONNECTS = 3


class SimDevice(Protocol):
    name: str
    #: Set (with ``closed_at``) when the broker ends the session (close, close_notify, 401).
    closed: asyncio.Event
    closed_at: float | None

    async def connect(self) -> None: ...

    async def send(self, seq: int) -> None:
        """Send one uplink and wait for its acknowledgement; DeviceError otherwise."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class FleetSpec:
    devices: int
    ramp_per_s: float
    rate_per_device: float
    duration_s: float
    revoke_fraction: float = 0.0
    #: After the ramp, how long to wait before revoking (a share of what remains).
    revoke_at_share: float = 0.5
    grace_s: float = 10.0

    def validate(self) -> None:
        if not 1 <= self.devices <= 100_000:
            raise ValueError("--devices must be 1..100000")
        if self.ramp_per_s <= 0 or self.rate_per_device < 0 or self.duration_s <= 0:
            raise ValueError("--ramp and --duration must be > 0, --rate >= 0")
        if not 0.0 <= self.revoke_fraction <= 1.0:
            raise ValueError("--revoke-fraction must be between 0 and 1")


#: Revokes device ``i``'s credential. The latency a device sees is measured from the moment
#: the revoke was asked for (wall clock, taken here before the call).
Revoker = Callable[[int], Awaitable[object]]


class Fleet:
    def __init__(
        self,
        spec: FleetSpec,
        make_device: Callable[[int], SimDevice],
        *,
        revoke: Revoker | None = None,
        progress: TextIO | None = sys.stderr,
    ) -> None:
        spec.validate()
        self.spec = spec
        self._make = make_device
        self._revoke = revoke
        self._progress = progress
        self.stats = FleetStats()
        self.devices: list[SimDevice] = []
        self._up: list[bool] = []
        #: Devices whose connect has not finished yet.
        self._connecting: set[int] = set()
        #: Set when no device could connect: why the run stopped early.
        self.stopped_early: str | None = None
        self._stop = asyncio.Event()

    async def run(self) -> dict[str, object]:
        spec = self.spec
        started = time.monotonic()
        stop_at = started + spec.duration_s
        tasks: list[asyncio.Task[None]] = []
        reporter = asyncio.ensure_future(self._report(started))
        revoker = None
        try:
            interval = 1.0 / spec.ramp_per_s
            for i in range(spec.devices):
                if time.monotonic() >= stop_at or self._stop.is_set():
                    break
                device = self._make(i)
                self.devices.append(device)
                self._up.append(False)
                tasks.append(asyncio.ensure_future(self._drive(i, device, stop_at)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=interval)
            if spec.revoke_fraction > 0 and self._revoke is not None and not self._stop.is_set():
                remaining = max(0.0, stop_at - time.monotonic())
                revoker = asyncio.ensure_future(self._revoke_some(remaining * spec.revoke_at_share))
            deadline = stop_at + spec.grace_s - time.monotonic()
            if tasks:
                # Until every device is done, the deadline, or the run is stopped early.
                everyone = asyncio.gather(*tasks, return_exceptions=True)
                stopper = asyncio.ensure_future(self._stop.wait())
                waiting: list[asyncio.Future[Any]] = [everyone, stopper]
                await asyncio.wait(
                    waiting,
                    timeout=max(0.1, deadline),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                stopper.cancel()
            if revoker is not None and not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(revoker, timeout=spec.grace_s)
        finally:
            for t in tasks:
                t.cancel()
            if revoker is not None:
                revoker.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for _ in sorted(self._connecting):  # cut off by the end of the run
                self.stats.error("connect:timeout (no answer by the end of the run)")
            self._connecting.clear()
            await asyncio.gather(*(self._close(d) for d in self.devices), return_exceptions=True)
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        summary = self.stats.summary(time.monotonic() - started)
        if self.stopped_early is not None:
            summary["stopped_early"] = self.stopped_early
        return summary

    async def _close(self, device: SimDevice) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(device.close(), timeout=5)

    async def _drive(self, index: int, device: SimDevice, stop_at: float) -> None:
        stats = self.stats
        t0 = time.monotonic()
        self._connecting.add(index)
        try:
            await device.connect()
        except DeviceError as exc:
            stats.error(f"connect:{exc.label}")
            self._failed_connect(exc)
            return
        finally:
            self._connecting.discard(index)
        stats.connect_latency_s.append(time.monotonic() - t0)
        stats.connected += 1
        if getattr(device, "delivers_on_connect", False):  # e.g. HTTP: the first uplink
            stats.attempted += 1
            stats.delivered += 1
        self._up[index] = True
        rate = self.spec.rate_per_device
        if rate <= 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    device.closed.wait(), timeout=max(0.0, stop_at - time.monotonic())
                )
            return
        period = 1.0 / rate
        # Spread devices over the period so the load is even, not in lock-step.
        next_at = time.monotonic() + random.random() * period
        seq = 0
        while not device.closed.is_set():
            now = time.monotonic()
            if now >= stop_at:
                return
            if next_at > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        device.closed.wait(), timeout=min(next_at, stop_at) - now
                    )
                continue
            next_at += period
            seq += 1
            stats.attempted += 1
            s0 = time.monotonic()
            try:
                await device.send(seq)
            except DeviceError as exc:
                if device.closed.is_set():
                    return
                stats.error(f"send:{exc.label}")
                continue
            stats.send_latency_s.append(time.monotonic() - s0)
            stats.delivered += 1

    def _failed_connect(self, exc: DeviceError) -> None:
        """Stop the run once the first devices all failed to connect and none did."""
        stats = self.stats
        failed = sum(n for k, n in stats.errors.items() if k.startswith("connect:"))
        if stats.connected or failed < min(self.spec.devices, STOP_AFTER_FAILED_CONNECTS):
            return
        if self.stopped_early is None:
            self.stopped_early = (
                f"no device could connect ({failed} tried, none connected; the last: "
                f"{exc.label}): stopped early"
            )
            self._stop.set()

    async def _revoke_some(self, delay: float) -> None:
        assert self._revoke is not None
        await asyncio.sleep(delay)
        connected = [
            i for i, up in enumerate(self._up) if up and not self.devices[i].closed.is_set()
        ]
        count = round(len(connected) * self.spec.revoke_fraction)
        chosen = random.sample(connected, count)
        watches = []
        for i in chosen:
            asked_at = time.time()
            try:
                await self._revoke(i)
            except Exception as exc:  # reported, not raised: the run goes on
                self.stats.error(f"revoke:{exc.__class__.__name__}")
                continue
            self.stats.revoked += 1
            watches.append(asyncio.ensure_future(self._watch_close(self.devices[i], asked_at)))
        if watches:
            await asyncio.gather(*watches)

    async def _watch_close(self, device: SimDevice, revoked_at_wall: float) -> None:
        try:
            await asyncio.wait_for(device.closed.wait(), timeout=self.spec.grace_s)
        except TimeoutError:
            self.stats.revoked_still_connected += 1
            return
        if device.closed_at is None:  # we closed it ourselves (end of run) first
            self.stats.revoked_still_connected += 1
            return
        self.stats.revoke_to_disconnect_s.append(max(0.0, device.closed_at - revoked_at_wall))

    async def _report(self, started: float) -> None:
        if self._progress is None:
            return
        last = 0
        while True:
            await asyncio.sleep(1.0)
            s = self.stats
            rate = s.delivered - last
            last = s.delivered
            errors = sum(s.errors.values())
            self._progress.write(
                f"\r[{time.monotonic() - started:6.1f}s] connected {s.connected:>6}  "
                f"msgs/s {rate:>7}  delivered {s.delivered:>8}  errors {errors:>5}  "
                f"revoked {s.revoked:>5}"
            )
            self._progress.flush()
