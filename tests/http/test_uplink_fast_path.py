"""The HTTP uplink path after issue 18: the appender's own bound (a request waits at most
``append_wait_s`` for its batch) and the 202 body.

The batch is bounded too (``redis.socket_timeout_s``); this is the request's guard if a
batch never reports (issue 18 replaced ``asyncio.wait_for`` by one timer per request, then by
one shared timer armed for the oldest waiting request).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from corem_ingress.adapters.http.appender import Appender
from corem_ingress.core.errors import Unavailable
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.uplink import Transport, Uplink, UplinkKind

UPLINK = Uplink.new(
    DeviceIdentity("t", "d" * 32, CredentialKind.API_KEY, "k"),
    Transport.HTTP,
    UplinkKind.EVENT,
    1,
    now=0.0,
)


class _Batcher:
    """Holds what is submitted; reports only when told (a batch that never answers)."""

    def __init__(self) -> None:
        self.done: list[object] = []

    def submit(self, _uplink: Uplink, done: object) -> None:
        self.done.append(done)


def _appender(wait: float) -> tuple[Appender, _Batcher]:
    batcher = _Batcher()
    return Appender(batcher, wait), batcher  # type: ignore[arg-type]


async def test_a_batch_that_never_answers_fails_the_request_within_the_bound() -> None:
    appender, _batcher = _appender(0.05)
    started = time.monotonic()
    with pytest.raises(Unavailable) as exc:
        await appender.append(UPLINK)
    assert 0.04 <= time.monotonic() - started < 2.0
    assert exc.value.reason == "append wait exceeded"


async def test_stored_before_the_bound_returns_and_a_late_report_is_ignored() -> None:
    appender, batcher = _appender(0.2)
    task = asyncio.ensure_future(appender.append(UPLINK))
    await asyncio.sleep(0)
    (done,) = batcher.done
    done(None)  # type: ignore[operator]
    await task  # stored: no error
    done(Unavailable("late"))  # type: ignore[operator]  # after the answer: no effect
    await asyncio.sleep(0.3)  # the cancelled timer never fires into a finished request


async def test_one_timer_bounds_each_request_by_its_own_deadline() -> None:
    """The timer is shared (armed for the oldest waiting request): a request answered in
    time leaves it, and a later request still gets its full bound, then 503."""
    appender, batcher = _appender(0.2)
    first = asyncio.ensure_future(appender.append(UPLINK))
    await asyncio.sleep(0.1)
    second_started = time.monotonic()
    second = asyncio.ensure_future(appender.append(UPLINK))
    third = asyncio.ensure_future(appender.append(UPLINK))
    await asyncio.sleep(0)
    batcher.done[0](None)  # type: ignore[operator]  # the first is stored
    batcher.done[2](None)  # type: ignore[operator]  # the third too, out of order
    await first
    await third
    with pytest.raises(Unavailable) as exc:
        await second
    assert exc.value.reason == "append wait exceeded"
    assert 0.18 <= time.monotonic() - second_started < 2.0
    assert not appender._waiting and appender._timer is None  # nothing left armed


@pytest.mark.parametrize("received_at", [0.0, 1700000000.123456, 1e16, 1.5e-7, 17])
def test_accepted_body_is_the_json_dumps_text(received_at: float) -> None:
    """The 202 body is written without the JSON encoder (issue 18): the same text."""
    import json
    from dataclasses import replace

    from corem_ingress.adapters.http.uplink import accepted_body

    up = replace(UPLINK, received_at=received_at)
    expected = json.dumps({"message_id": up.message_id, "received_at": up.received_at})
    assert accepted_body(up) == expected
