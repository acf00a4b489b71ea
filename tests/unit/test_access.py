"""The one access policy every transport asks (pure: the clock is an argument)."""

from __future__ import annotations

import pytest

from corem_ingress.core.access import AccessPolicy, Refusal
from corem_ingress.core.causes import Cause
from corem_ingress.core.limits import DeviceRateLimiter, TenantConnections
from corem_ingress.core.throttle import AuthThrottle

pytestmark = pytest.mark.unit


def policy() -> AccessPolicy:
    return AccessPolicy(
        AuthThrottle(max_failures=3, window_s=60, block_s=100),
        DeviceRateLimiter(rate_per_s=0.5, burst=1),
        TenantConnections(max_per_tenant=1),
    )


def test_failures_block_the_source_with_a_retry_time() -> None:
    p = policy()
    assert p.check_source("192.0.2.1", 0.0) is None
    assert not p.auth_failed("192.0.2.1", Cause.UNKNOWN_OR_REVOKED, 1.0)
    assert not p.auth_failed("192.0.2.1", Cause.WRONG_KEY, 2.0)
    assert p.auth_failed("192.0.2.1", Cause.BAD_CERTIFICATE, 3.0)  # the third blocks
    assert p.check_source("192.0.2.1", 3.0) == Refusal(Cause.AUTH_THROTTLE, 100)
    assert p.check_source("192.0.2.1", 52.5) == Refusal(Cause.AUTH_THROTTLE, 51)
    assert p.check_source("192.0.2.2", 3.0) is None
    assert p.check_source("192.0.2.1", 103.0) is None


def test_causes_that_are_not_the_peers_doing_do_not_count() -> None:
    p = policy()
    for now in range(10):
        assert not p.auth_failed("192.0.2.1", Cause.UNAVAILABLE, float(now))
        assert not p.auth_failed("192.0.2.1", Cause.TENANT_CONNECTIONS, float(now))
    assert p.check_source("192.0.2.1", 10.0) is None


def test_tenant_slots() -> None:
    p = policy()
    assert p.open_session("acme") is None
    assert p.tenant_full("acme")
    assert p.open_session("acme") == Refusal(Cause.TENANT_CONNECTIONS)
    p.close_session("acme")
    assert not p.tenant_full("acme")
    assert p.open_session("acme") is None


def test_message_rate_says_when_to_retry() -> None:
    p = policy()
    assert p.check_message("dev-1", 0.0) is None
    assert p.check_message("dev-1", 0.1) == Refusal(Cause.DEVICE_RATE, 2)
    assert p.check_message("dev-2", 0.1) is None
    assert p.check_message("dev-1", 2.1) is None


def test_no_limits_by_default() -> None:
    p = AccessPolicy()
    for now in range(100):
        assert p.check_message("dev", float(now) / 1000) is None
        assert p.open_session("t") is None
