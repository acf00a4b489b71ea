"""Failed-authentication throttling per source IP: pure, clock passed in, no I/O."""

import pytest

from corem_ingress.core.throttle import AuthThrottle

pytestmark = pytest.mark.unit

IP = "192.0.2.1"


def throttle(**kw: float) -> AuthThrottle:
    args: dict[str, float] = {"max_failures": 3, "window_s": 10.0, "block_s": 60.0}
    args.update(kw)
    return AuthThrottle(
        max_failures=int(args["max_failures"]),
        window_s=args["window_s"],
        block_s=args["block_s"],
        max_sources=int(args.get("max_sources", 100)),
    )


def test_blocks_after_n_failures_within_the_window() -> None:
    t = throttle()
    assert not t.failure(IP, 0.0)
    assert not t.failure(IP, 1.0)
    assert not t.blocked(IP, 1.5)
    assert t.failure(IP, 2.0)  # the third: blocked now
    assert t.blocked(IP, 2.0)
    assert t.blocked(IP, 61.9)
    assert t.blocked_until(IP, 10.0) == 62.0
    assert t.blocks == 1


def test_block_ends_after_block_s_and_starts_clean() -> None:
    t = throttle()
    for now in (0.0, 1.0, 2.0):
        t.failure(IP, now)
    assert not t.blocked(IP, 62.0)
    assert t.blocked_until(IP, 62.0) is None
    # A clean slate: one more failure does not block again.
    assert not t.failure(IP, 63.0)
    assert not t.blocked(IP, 63.0)


def test_failures_outside_the_window_do_not_count() -> None:
    t = throttle()
    t.failure(IP, 0.0)
    t.failure(IP, 5.0)
    assert not t.failure(IP, 10.0)  # the one at 0.0 left the window
    assert not t.blocked(IP, 10.0)
    assert t.failure(IP, 11.0)  # 5, 10, 11


def test_failures_while_blocked_do_not_extend_the_block() -> None:
    t = throttle()
    for now in (0.0, 1.0, 2.0):
        t.failure(IP, now)
    for now in (3.0, 30.0, 61.0):
        assert not t.failure(IP, now)
    assert not t.blocked(IP, 62.0)


def test_own_valid_credentials_between_guesses_do_not_reset_the_count() -> None:
    """Issue 12 §3: 9 wrong + 1 own valid credential, repeated, used to never block.

    The throttle has no "success" input any more: failures leave the count only by ageing
    out of the window, so interleaved successes change nothing.
    """
    t = throttle(max_failures=10, window_s=60.0, block_s=300.0)
    assert not hasattr(t, "success")
    now = 0.0
    blocked_at = None
    for _round in range(3):
        for _ in range(9):
            now += 0.01
            if t.failure(IP, now):
                blocked_at = now
        now += 0.01  # the attacker's own valid key here: nothing to tell the throttle
    assert blocked_at is not None
    assert t.blocked(IP, now)


def test_sources_are_independent() -> None:
    t = throttle()
    for now in (0.0, 1.0, 2.0):
        t.failure(IP, now)
    assert t.blocked(IP, 3.0)
    assert not t.blocked("192.0.2.2", 3.0)
    assert not t.blocked("2001:db8::1", 3.0)


def test_memory_is_bounded_lru() -> None:
    t = throttle(max_sources=3, window_s=100.0)
    for i in range(10):
        t.failure(f"10.0.0.{i}", float(i))
    assert len(t) == 3
    t.failure("10.0.0.7", 20.0)  # touched: now the most recent
    t.failure("10.0.0.99", 21.0)  # evicts the least recent (10.0.0.8)
    assert len(t) == 3
    # 10.0.0.7 kept its two failures: one more blocks it.
    assert t.failure("10.0.0.7", 22.0)
    assert t.blocked("10.0.0.7", 22.0)


def test_disabled_never_blocks() -> None:
    t = throttle(max_failures=0)
    assert not t.enabled
    for i in range(100):
        assert not t.failure(IP, float(i))
    assert not t.blocked(IP, 100.0)
    assert len(t) == 0


def test_block_s_zero_counts_but_never_blocks() -> None:
    t = throttle(block_s=0.0)
    for now in (0.0, 1.0, 2.0, 3.0):
        assert not t.failure(IP, now)
    assert not t.blocked(IP, 3.0)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        AuthThrottle(max_failures=-1)
    with pytest.raises(ValueError):
        AuthThrottle(window_s=0)
    with pytest.raises(ValueError):
        AuthThrottle(max_sources=0)


def test_blocks_are_exported_once_and_imported_without_counting() -> None:
    from corem_ingress.core.throttle import AuthThrottle

    here = AuthThrottle(max_failures=2, window_s=60, block_s=30)
    assert not here.failure("1.2.3.4", 100.0)
    assert here.failure("1.2.3.4", 101.0)
    assert here.drain_new_blocks() == [("1.2.3.4", 131.0)]
    assert here.drain_new_blocks() == []
    there = AuthThrottle(max_failures=2, window_s=60, block_s=30)
    there.block_until("1.2.3.4", 131.0)
    assert there.blocked("1.2.3.4", 120.0) and not there.blocked("1.2.3.4", 131.0)
    assert there.blocks == 0 and there.drain_new_blocks() == []
