"""RFC 7252 §4.2 retransmission schedule, on a clock the test holds (pure)."""

from __future__ import annotations

import pytest

from corem_ingress.adapters.coap.retransmit import Retransmission

pytestmark = pytest.mark.unit


def test_timeouts_double_and_it_gives_up_after_max_retransmit() -> None:
    r = Retransmission.start(100.0, ack_timeout=2.0, max_retransmit=4, random_factor=1.25)
    assert (r.next_at, r.sent) == (102.5, 1)
    deadlines = []
    now = r.next_at
    while r.timed_out(now):
        deadlines.append(r.next_at - now)
        now = r.next_at
    # Four retransmissions, 5, 10, 20 and 40 s after the one before; then it gives up.
    assert deadlines == [5.0, 10.0, 20.0, 40.0]
    assert r.sent == 5
    assert not r.timed_out(now + 1000)


def test_the_schedule_follows_the_given_clock_not_real_time() -> None:
    r = Retransmission.start(0.0, ack_timeout=1.0, max_retransmit=1, random_factor=1.0)
    assert r.timed_out(7.0) and r.next_at == 9.0  # a late check counts from when it ran
    assert not r.timed_out(9.0)


def test_the_random_factor_is_bounded() -> None:
    with pytest.raises(ValueError):
        Retransmission.start(0.0, ack_timeout=2.0, max_retransmit=4, random_factor=1.6)
