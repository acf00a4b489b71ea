"""LwM2M events: the pure event shape / SSE framing, and the tenant's stream end to end
(the simulator's client over real DTLS, a real node, real Redis, SSE over real HTTP, the CLI)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m.events import EventKind, Lwm2mEvent, check_event_id, sse_frame
from tests.lwm2m.conftest import provision
from tests.lwm2m.sse import sse
from tests.lwm2m.test_routing_cli import cli


def test_event_fields_round_trip_and_sse_frame() -> None:
    ev = Lwm2mEvent(EventKind.UPDATED, "acme", "dev-1", 12.5, {"lifetime_s": 60, "x": "a\nb"})
    assert Lwm2mEvent.from_fields(ev.to_fields()) == ev
    frame = sse_frame("5-0", ev).decode()
    lines = frame.split("\n")
    # One data line whatever the data holds (a newline in a value is escaped by JSON).
    assert lines[:2] == ["id: 5-0", "event: updated"] and lines[3:] == ["", ""]
    assert json.loads(lines[2].removeprefix("data: ")) == {
        "id": "5-0",
        "kind": "updated",
        "tenant_id": "acme",
        "device_id": "dev-1",
        "at": 12.5,
        "data": {"lifetime_s": 60, "x": "a\nb"},
    }
    with pytest.raises(InvalidArgument):
        Lwm2mEvent.from_fields({**ev.to_fields(), "kind": "nope"})
    with pytest.raises(InvalidArgument):
        Lwm2mEvent.from_fields({**ev.to_fields(), "data": "[1]"})


@pytest.mark.parametrize("text", ["0", "1700000000000-0", "1-12"])
def test_event_ids_accepted(text: str) -> None:
    assert check_event_id(text) == text


@pytest.mark.parametrize("text", ["", "$", "1-", "abc", "1-2\n", "-1-0", "1" * 21 + "-0"])
def test_event_ids_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        check_event_id(text)


@pytest.mark.integration
async def test_registration_events_over_sse_and_the_cli(
    lwm2m_node: Any, clock: Any, redis_url: str
) -> None:
    n = await lwm2m_node(clock=clock, observe_paths=["/3303/0"])
    p = await provision(n.registry, n.certs, "psk")
    other = await provision(n.registry, n.certs, "psk")
    url = n.api.admin_base or n.api.base
    events_url = url + "/api/v1/lwm2m/events"
    token = n.api.tokens["acme"]
    async with (
        sse(n.api.session, events_url, token) as all_devices,
        sse(n.api.session, events_url, token, params={"device_id": p.device_id}) as one_device,
        sse(n.api.session, events_url, n.api.tokens["globex"]) as globex,
    ):
        dev = n.device(p, lifetime_s=60)
        await dev.connect()
        reg = await one_device.next()
        assert reg["event"] == "registered" and reg["data"]["device_id"] == p.device_id
        assert reg["data"]["tenant_id"] == "acme"
        assert reg["data"]["data"]["registration_id"] == dev.location[1]
        assert reg["data"]["data"]["binding"] == "U" and reg["id"] == reg["data"]["id"]
        await dev.update(lifetime_s=60)
        updated = await one_device.next()
        assert updated["event"] == "updated" and updated["data"]["data"]["lifetime_s"] == 60

        # Another device of the tenant: on the unfiltered stream only.
        dev2 = n.device(other)
        await dev2.connect()
        seen = [await all_devices.next() for _ in range(3)]
        assert [(e["event"], e["data"]["device_id"]) for e in seen] == [
            ("registered", p.device_id),
            ("updated", p.device_id),
            ("registered", other.device_id),
        ]
        # Expiry (the node's clock) ends the observation of /3303/0 too.
        clock.advance(61)
        cancelled = await one_device.next()
        expired = await one_device.next()
        assert (cancelled["event"], cancelled["data"]["data"]["path"]) == (
            "observation_cancelled",
            "/3303/0",
        )
        assert cancelled["data"]["data"]["reason"] == "registration expired"
        assert expired["event"] == "expired"
        assert (await dev.register()).code.is_successful()
        again = await one_device.next()
        assert again["event"] == "registered"
        await dev.deregister()
        gone = [await one_device.next(), await one_device.next()]
        assert [e["event"] for e in gone] == ["observation_cancelled", "deregistered"]
        # Another tenant's operator saw none of it: its first event is its own device's.
        g = await provision(n.registry, n.certs, "psk", tenant="globex")
        await n.device(g).connect()
        first = await globex.next()
        assert (first["event"], first["data"]["device_id"]) == ("registered", g.device_id)
        assert first["data"]["tenant_id"] == "globex"

    # Resumable: from after the first event, the same ones again, in order.
    async with sse(
        n.api.session,
        events_url,
        token,
        params={"device_id": p.device_id},
        last_event_id=reg["id"],
    ) as resumed:
        assert (await resumed.next())["id"] == updated["id"]
        assert (await resumed.next())["id"] == cancelled["id"]
    # Bad input: a 400 JSON error.
    for bad in ({"last_event_id": "x"}, {"device_id": ""}, {"nope": "1"}):
        r = await n.api.request("GET", "/api/v1/lwm2m/events?" + "&".join(
            f"{k}={v}" for k, v in bad.items()), tenant="acme")  # fmt: skip
        assert r.status == 400, (bad, r.body)
    assert (await n.api.request("GET", "/api/v1/lwm2m/events")).status == 401

    # The CLI follows the same stream (from the start here, so it exits at once).
    code, out, err = await cli(redis_url, "events", "--tenant", "acme", "--after", "0",
                               "--device", p.device_id, "--count", "1")  # fmt: skip
    assert code == 0, err
    assert out == {"id": reg["id"], **{k: v for k, v in reg["data"].items() if k != "id"}}
    code, _, err = await cli(redis_url, "events", "--tenant", "acme", "--after", "bad")
    assert code == 2 and "argument --after: must be an event id" in err
