"""Per-device token buckets and per-tenant connection counts: pure, clock passed in."""

import pytest

from corem_ingress.core.limits import DeviceRateLimiter, TenantConnections, TokenBucket

pytestmark = pytest.mark.unit


def test_token_bucket_starts_full_and_refills_at_rate() -> None:
    b = TokenBucket.full(rate=2.0, burst=3.0, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(0.4)  # 0.8 tokens
    assert b.take(0.5)  # 1.0 token
    assert not b.take(0.5)
    assert b.take(100.0) and b.take(100.0) and b.take(100.0)  # capped at burst
    assert not b.take(100.0)


def test_token_bucket_ignores_a_clock_going_back() -> None:
    b = TokenBucket.full(rate=1.0, burst=1.0, now=10.0)
    assert b.take(10.0)
    assert not b.take(5.0)
    assert b.take(11.0)


def test_device_rate_limiter_per_device() -> None:
    lim = DeviceRateLimiter(rate_per_s=1.0, burst=2)
    assert lim.allow("d1", 0.0) and lim.allow("d1", 0.0)
    assert not lim.allow("d1", 0.0)
    assert lim.allow("d2", 0.0)  # another device has its own bucket
    assert lim.allow("d1", 1.0)
    assert lim.refused == 1


def test_device_rate_limiter_disabled_by_default() -> None:
    lim = DeviceRateLimiter()
    assert not lim.enabled
    assert all(lim.allow("d", 0.0) for _ in range(1000))
    assert len(lim) == 0


def test_device_rate_limiter_is_bounded() -> None:
    lim = DeviceRateLimiter(rate_per_s=1.0, burst=1, max_keys=2)
    for d in ("a", "b", "c"):
        assert lim.allow(d, 0.0)
    assert len(lim) == 2
    assert lim.allow("a", 0.0)  # "a" was evicted: a full bucket again
    assert not lim.allow("c", 0.0)
    lim.forget("c")
    assert lim.allow("c", 0.0)


def test_device_rate_limiter_cost() -> None:
    lim = DeviceRateLimiter(rate_per_s=10.0, burst=10)
    assert lim.allow("d", 0.0, cost=10)
    assert not lim.allow("d", 0.0, cost=1)


def test_tenant_connections_limit_and_release() -> None:
    tc = TenantConnections(max_per_tenant=2)
    assert tc.acquire("acme") and tc.acquire("acme")
    assert not tc.acquire("acme")
    assert tc.acquire("other")
    assert tc.count("acme") == 2 and tc.refused == 1
    tc.release("acme")
    assert tc.acquire("acme")
    for _ in range(5):  # extra releases are ignored; zero counts are dropped
        tc.release("acme")
    assert tc.count("acme") == 0
    assert len(tc) == 1


def test_tenant_connections_unlimited() -> None:
    tc = TenantConnections()
    assert all(tc.acquire("acme") for _ in range(10_000))
    assert tc.count("acme") == 10_000 and tc.refused == 0


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        DeviceRateLimiter(rate_per_s=-1)
    with pytest.raises(ValueError):
        DeviceRateLimiter(burst=0)
    with pytest.raises(ValueError):
        TenantConnections(max_per_tenant=-1)


def test_tenant_limit_counts_the_other_nodes_connections() -> None:
    from corem_ingress.core.limits import TenantConnections

    conns = TenantConnections(max_per_tenant=3)
    assert conns.acquire("t") and conns.local_counts() == {"t": 1}
    conns.set_others({"t": 2, "u": 0})
    assert not conns.acquire("t")  # 1 here + 2 elsewhere = the limit
    assert conns.acquire("u")
    conns.set_others({})
    assert conns.acquire("t")
