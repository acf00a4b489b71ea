"""Issue 15.2: composite operations through the admin API, over a real DTLS session, with
the simulator's LwM2M client (Wakaama's build has no composite operations: it answers
them 4.05, checked in test_wakaama_manage.py). Routed through node B and the CLI:
test_routing_cli.py."""

from __future__ import annotations

from typing import Any

import pytest

from tests.lwm2m.conftest import provision, until

pytestmark = pytest.mark.integration


async def test_composite_operations_through_the_admin_api(lwm2m_node: Any) -> None:
    n = await lwm2m_node(observe_paths=[])
    p = await provision(n.registry, n.certs, "psk")
    dev = n.device(p)
    await dev.connect()
    d = p.device_id

    # Read-Composite in both SenML formats (the client announced CBOR: the default).
    for accept in (None, 110, 112):
        body: dict[str, Any] = {"paths": ["/3/0/0", "/3303/0/5700", "/1/0/1"]}
        if accept is not None:
            body["accept"] = accept
        r = await n.op(d, "read-composite", **body)
        assert r.status == 200, r.body
        got = {x["path"]: (x["type"], x["value"]) for x in r.body["records"]}
        assert got == {
            "/3/0/0": ("string", "CORE-M"),
            "/3303/0/5700": ("float", 21.5),
            "/1/0/1": ("integer", 300),
        }
    assert ("FETCH", "/", None) in dev.requests

    # Write-Composite: values of three objects in one iPATCH.
    values = [
        {"path": "/1/0/2", "value": 4},
        {"path": "/3/0/15", "value": "Europe/Paris"},
        {"path": "/3303/0/5750", "value": "fridge"},
    ]
    r = await n.op(d, "write-composite", values=values, accept=112)
    assert r.status == 200 and r.body["code"] == "2.04", r.body
    vals = {str(k): v for k, v in dev.client.values.items()}
    assert (vals["/1/0/2"], vals["/3/0/15"], vals["/3303/0/5750"]) == (4, "Europe/Paris", "fridge")
    # Refused before the device is asked (the model: /3/0/9 is read-only).
    r = await n.op(d, "write-composite", values=[{"path": "/3/0/9", "value": 1}])
    assert r.status == 400 and "not writable" in r.body["error"]["message"]
    assert (await n.op(d, "read-composite", paths=[])).status == 400
    assert (await n.op(d, "read-composite", path="/3/0")).status == 400
    assert (await n.op(d, "read-composite", paths=["/3/0"], accept=11542)).status == 400
    assert (await n.op(d, "read-composite", paths=["/9/0"])).status == 404  # the device's

    # Observe-Composite: one observation of both paths; a change notifies them together.
    paths = ["/3303/0/5700", "/3/0/9"]
    r = await n.op(d, "observe-composite", paths=paths)
    assert r.status == 200, r.body
    assert {x["path"] for x in r.body["records"]} == {"/3303/0/5700", "/3/0/9"}
    assert len(dev.observed) == 1
    await dev.send(3)  # the temperature changes: 20.75

    async def notified() -> bool:
        ups = await n.uplinks(at_least=1)
        return any(
            {x["path"] for x in u["payload"]["records"]} == {"/3303/0/5700", "/3/0/9"}
            and u["payload"]["source"] == "notify"
            for u in ups
        )

    await until(notified)
    # Its own observation, not the one of a single path.
    assert (await n.op(d, "cancel-observe", path="/3303/0/5700")).status == 404
    r = await n.op(d, "cancel-observe-composite", paths=paths)
    assert r.status == 200 and r.body["code"] == "2.05", r.body
    assert dev.observed == {}
    assert ("FETCH", "/", 1) in dev.requests
    assert (await n.op(d, "cancel-observe-composite", paths=paths)).status == 404
