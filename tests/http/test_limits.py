"""Limits on HTTP: failed-authentication throttle per source address (both APIs) and the
per-device uplink rate; 429 with Retry-After, counted in the metrics. Clock controlled."""

from __future__ import annotations

from typing import Any

import aiohttp

from corem_ingress import metrics
from corem_ingress.adapters import http

from .conftest import Api


def counted(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return value or 0.0


async def test_failed_authentications_block_the_address_then_it_recovers(
    start_node: Any, operator_tokens: Any, clock: Any
) -> None:
    path, tokens = operator_tokens
    node = await start_node(
        [http.build],
        clock=clock,
        http={"admin_tokens_file": str(path)},
        limits={"auth_fail_max": 3, "auth_fail_window_s": 60, "auth_block_s": 120},
    )
    throttled_before = counted(
        "corem_limit_refusals_total", transport="http", limit="auth_throttle"
    )
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{node.listeners[0].port}", tokens)
        dev = await api.provision("acme", "hw-1")
        bad = "sk_live_" + "C" * 42 + "A"
        assert [(await api.uplink(dev["device_id"], bad)).status for _ in range(3)] == [401] * 3
        # Blocked now: even the right key and the right operator token get 429.
        blocked = await api.uplink(dev["device_id"], dev["api_key"])
        assert blocked.status == 429
        assert blocked.error_code == "RESOURCE_EXHAUSTED"
        assert blocked.headers["Retry-After"] == "120"
        admin = await api.request("GET", "/api/v1/devices", tenant="acme")
        assert admin.status == 429
        clock.advance(121)
        assert (await api.uplink(dev["device_id"], dev["api_key"])).status == 202
        # Operator-token failures count the same way.
        wrong = {"Authorization": "Bearer cop_wrong"}
        for _ in range(3):
            assert (await api.request("GET", "/api/v1/devices", headers=wrong)).status == 401
        assert (await api.request("GET", "/api/v1/devices", tenant="acme")).status == 429
    after = counted("corem_limit_refusals_total", transport="http", limit="auth_throttle")
    assert after - throttled_before == 3


async def test_own_valid_key_between_guesses_does_not_reset_the_count(
    start_node: Any, operator_tokens: Any, clock: Any
) -> None:
    """Issue 12 §3: 9 wrong keys + 1 own valid key, repeated, must end in 429."""
    path, tokens = operator_tokens
    node = await start_node(
        [http.build],
        clock=clock,
        http={"admin_tokens_file": str(path)},
        limits={"auth_fail_max": 10, "auth_fail_window_s": 60, "auth_block_s": 300},
    )
    statuses: list[int] = []
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{node.listeners[0].port}", tokens)
        dev = await api.provision("acme", "hw-1")
        bad = "sk_live_" + "C" * 42 + "A"
        for _ in range(3):
            statuses += [(await api.uplink(dev["device_id"], bad)).status for _ in range(9)]
            statuses.append((await api.uplink(dev["device_id"], dev["api_key"])).status)
            clock.advance(1)
    # 9 x 401, 202, then the 10th failure (first of round 2) blocks: the rest are 429.
    assert statuses[:10] == [401] * 9 + [202]
    assert statuses[10] == 401
    assert set(statuses[11:]) == {429}


async def test_device_rate_limit_is_429_and_nothing_is_written(
    start_node: Any, operator_tokens: Any, clock: Any, redis: Any
) -> None:
    path, tokens = operator_tokens
    node = await start_node(
        [http.build],
        clock=clock,
        http={"admin_tokens_file": str(path)},
        limits={"per_device_msgs_per_s": 0.5, "per_device_burst": 3},
    )
    async with aiohttp.ClientSession() as session:
        api = Api(session, f"http://127.0.0.1:{node.listeners[0].port}", tokens)
        a = await api.provision("acme", "hw-a")
        b = await api.provision("acme", "hw-b")
        statuses = [(await api.uplink(a["device_id"], a["api_key"])).status for _ in range(5)]
        assert statuses == [202, 202, 202, 429, 429]
        limited = await api.uplink(a["device_id"], a["api_key"])
        assert limited.error_code == "RESOURCE_EXHAUSTED"
        assert limited.headers["Retry-After"] == "2"
        # Another device has its own bucket; time refills this one.
        assert (await api.uplink(b["device_id"], b["api_key"])).status == 202
        clock.advance(2)
        assert (await api.uplink(a["device_id"], a["api_key"])).status == 202
    entries = await redis.xlen(node.keys.uplink_stream("acme"))
    assert entries == 5
