"""Issue 15 against Eclipse Wakaama's lwm2mclient (tinydtls, PSK): object models
(lwm2m.models_dir with Wakaama's test object 31024), Write-Attributes and Discover with
attributes, default attributes after registration, Create and Delete of instances.

One broker and one Wakaama process for the module (Wakaama is slow to start under load);
tests that change the device's state undo it or use their own instance ids.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.lwm2m.test_wakaama import (
    Broker,
    Device,
    Wakaama,
    _registered,
    _values,
    provision,
    start_broker,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

DDF = Path(__file__).parent / "ddf"


@dataclass
class Client:
    broker: Broker
    dev: Device
    wk: Wakaama

    async def op(self, operation: str, **body: Any) -> Any:
        return await self.broker.op(self.dev.device_id, operation, **body)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(
    redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Client]:
    async with start_broker(
        redis_server,
        tmp_path_factory.mktemp("wk-manage"),
        models_dir=str(DDF),
        # The tenant's own defaults replace the global ones; /9 is not announced: skipped.
        default_attributes=["/3/0?pmax=999"],
        tenant_default_attributes={"acme": "/3/0?pmin=1&pmax=120 /31024/11/1?gt=50 /9?pmax=5"},
    ) as b:
        dev = await provision(b)
        wk = Wakaama(b, dev, lifetime_s=300, max_s=240)
        try:
            await _registered(b, dev)
            yield Client(b, dev, wk)
        finally:
            wk.stop()


async def test_models_api_serves_shipped_and_folder_objects(client: Client) -> None:
    api = client.broker.api
    r = await api.request("GET", "/api/v1/lwm2m/models", tenant="acme")
    assert r.status == 200
    ids = [o["id"] for o in r.body["objects"]]
    assert ids == [0, 1, 2, 3, 4, 5, 6, 7, 3303, 31024]
    r = await api.request("GET", "/api/v1/lwm2m/models/31024", tenant="acme")
    assert r.status == 200 and r.body["name"] == "Wakaama Test"
    assert {x["id"]: (x["name"], x["range"]) for x in r.body["resources"]}[1] == ("test", "0..255")
    assert (await api.request("GET", "/api/v1/lwm2m/models/9999", tenant="acme")).status == 404
    assert (await api.request("GET", "/api/v1/lwm2m/models/x", tenant="acme")).status == 400
    assert (await api.request("GET", "/api/v1/lwm2m/models")).status == 401


async def test_model_types_reads_and_refuses_bad_writes_before_the_device(client: Client) -> None:
    r = await client.op("read", path="/31024/10")
    assert r.status == 200, r.body
    values = _values(r.body["records"])
    # SenML carries a number; the model (from the folder) says integer / float.
    assert values["/31024/10/1"] == ("integer", 20)
    assert values["/31024/10/3"][0] == "float"
    # Out of the DDF's range 0..255: refused here with the model's reason.
    r = await client.op("write", path="/31024/10/1", values=[{"path": "/31024/10/1", "value": 300}])
    assert r.status == 400 and "0..255" in r.body["error"]["message"]
    r = await client.op("write", path="/3/0/9", values=[{"path": "/3/0/9", "value": 5}])
    assert r.status == 400 and "not writable" in r.body["error"]["message"]
    r = await client.op("execute", path="/31024/10/1")
    assert r.status == 400 and "not executable" in r.body["error"]["message"]
    # Inside the range: written (type taken from the model), read back.
    r = await client.op("write", path="/31024/10/1", values=[{"path": "/31024/10/1", "value": 200}])
    assert r.status == 200, r.body
    r = await client.op("read", path="/31024/10/1")
    assert _values(r.body["records"])["/31024/10/1"] == ("integer", 200)


async def test_discover_names_objects_and_resources(client: Client) -> None:
    r = await client.op("discover", path="/31024")
    assert r.status == 200, r.body
    names = {x["target"]: x["name"] for x in r.body["links"]}
    assert names["/31024"] == "Wakaama Test", r.body
    assert names["/31024/10/1"] == "test" and names["/31024/10/2"] == "exec", r.body
    r = await client.op("discover", path="/3/0")
    names = {x["target"]: x["name"] for x in r.body["links"]}
    assert names["/3/0/0"] == "Manufacturer" and names["/3/0/4"] == "Reboot"


def _attrs(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {x["target"]: x["params"] for x in body["links"]}


async def test_default_attributes_written_after_registration(client: Client) -> None:
    """The tenant's defaults (not the global ones) were written after Register, before the
    observation of /3/0; the unannounced /9 was skipped, nothing failed."""
    r = await client.op("discover", path="/3/0")
    assert r.status == 200, r.body
    assert {k: v for k, v in _attrs(r.body)["/3/0"].items() if k in ("pmin", "pmax")} == {
        "pmin": "1",
        "pmax": "120",
    }
    r = await client.op("discover", path="/31024/11")
    assert float(_attrs(r.body)["/31024/11/1"]["gt"]) == 50  # Wakaama says "50.0"
    assert client.broker.lwm2m.stats["attributes_failed"] == 0


async def test_write_attributes_and_discover_shows_them(client: Client) -> None:
    r = await client.op(
        "write-attributes", path="/31024/12/1", pmin=2, pmax=30, gt=100, lt=10, st=1
    )
    assert r.status == 200 and r.body["code"] == "2.04", r.body
    r = await client.op("discover", path="/31024/12/1")
    assert r.status == 200, r.body
    got = _attrs(r.body)["/31024/12/1"]
    # Wakaama writes the numbers of gt/lt/st as floats ("100.0").
    assert {k: float(got[k]) for k in ("pmin", "pmax", "gt", "lt", "st")} == {
        "pmin": 2, "pmax": 30, "gt": 100, "lt": 10, "st": 1,
    }  # fmt: skip
    # Cleared attributes are gone.
    r = await client.op("write-attributes", path="/31024/12/1", clear=["gt", "lt", "st"])
    assert r.status == 200, r.body
    got = _attrs((await client.op("discover", path="/31024/12/1")).body)["/31024/12/1"]
    assert "gt" not in got and "lt" not in got and got.get("pmax") == "30"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"pmin": 10, "pmax": 5}, "pmin must not exceed pmax"),
        ({"gt": 1, "lt": 5}, "lt + 2*st < gt"),
        ({"pmin": -1}, ">= 0"),
        ({"pmin": 1.5}, "whole number"),
        ({"pmin": "1"}, "must be a number"),
        ({}, "at least one attribute"),
        ({"clear": ["nope"]}, "unknown attribute"),
        ({"path": "/3/0", "gt": 1}, "apply to a resource"),
        ({"path": "/3/0/0", "gt": 1}, "numeric resource"),
        ({"pmax": 5, "bogus": 1}, "unknown"),
    ],
)
async def test_write_attributes_refusals(
    client: Client, body: dict[str, Any], message: str
) -> None:
    r = await client.op("write-attributes", **{"path": "/31024/10/1", **body})
    assert r.status == 400 and message in r.body["error"]["message"], r.body


async def test_create_and_delete_an_instance_of_the_test_object(client: Client) -> None:
    values = [
        {"path": "/31024/20/1", "value": 42},
        {"path": "/31024/20/3", "value": 1.5},
    ]
    r = await client.op("create", path="/31024", values=values)
    assert r.status == 200 and r.body["code"] == "2.01", r.body
    assert r.body["instances"] == ["/31024/20"]
    r = await client.op("read", path="/31024/20")
    assert r.status == 200, r.body
    got = _values(r.body["records"])
    assert got["/31024/20/1"] == ("integer", 42) and got["/31024/20/3"] == ("float", 1.5)
    r = await client.op("delete", path="/31024/20")
    assert r.status == 200 and r.body["code"] == "2.02", r.body
    assert (await client.op("read", path="/31024/20")).status == 404
    assert (await client.op("delete", path="/31024/20")).status == 404


@pytest.mark.parametrize(
    ("operation", "body", "message"),
    [
        ("create", {"path": "/31024/21", "values": [{"path": "/31024/21/1", "value": 1}]},
         "Create applies to: object"),
        ("create", {"path": "/31024", "values": [{"path": "/31024/21/1", "value": 256}]},
         "0..255"),
        ("create", {"path": "/31024", "values": [{"path": "/3/0/1", "value": "x"}]},
         "lies outside"),
        ("create", {"path": "/31024", "values": []}, "values is a list"),
        ("delete", {"path": "/31024"}, "Delete applies to: object instance"),
        ("delete", {"path": "/31024/10/1"}, "Delete applies to: object instance"),
    ],
)  # fmt: skip
async def test_create_and_delete_refusals(
    client: Client, operation: str, body: dict[str, Any], message: str
) -> None:
    r = await client.op(operation, **body)
    assert r.status == 400 and message in r.body["error"]["message"], r.body


async def test_composite_operations_go_unanswered_by_this_wakaama_build(client: Client) -> None:
    """The Wakaama build (fc4c4315, lwm2mclient) has no composite operations: it drops a
    FETCH / iPATCH without an answer, so the operator gets 503 at the timeout (the
    simulator's client is the composite peer). The device stays usable."""
    r = await client.op("read-composite", paths=["/3/0/0", "/31024/10/1"], timeout_s=1)
    assert r.status == 503 and "did not answer" in r.body["error"]["message"], r.body
    r = await client.op("write-composite", values=[{"path": "/31024/10/1", "value": 5}],
                        timeout_s=1)  # fmt: skip
    assert r.status == 503, r.body
    assert (await client.op("read", path="/3/0/0")).status == 200
