"""LwM2M 1.1 composite operations as data: Read-/Write-/Observe-Composite and its Cancel in
SenML JSON and CBOR, answered by the simulated client, interpreted; observation keys."""

from __future__ import annotations

import json

import cbor2
import pytest

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.client_objects import SimulatedClient
from corem_ingress.lwm2m.content import CF_SENML_CBOR, CF_SENML_JSON, CF_TLV
from corem_ingress.lwm2m.model import Lwm2mPath, ValueType
from corem_ingress.lwm2m.observations import ObservationTable, Owner
from corem_ingress.lwm2m.operations import DeviceRequest, DeviceResponse, Operation, interpret
from corem_ingress.lwm2m.records import Record

pytestmark = pytest.mark.unit

P = Lwm2mPath.parse
NOW = 1_700_000_000.0


def _client() -> SimulatedClient:
    return SimulatedClient("ep", clock=lambda: NOW)


def _ask(client: SimulatedClient, req: DeviceRequest) -> DeviceResponse:
    """The client's raw answer (``test_client_objects.ask`` interprets it too)."""
    a = client.handle(req.method, req.uri_path, content_format=req.content_format,
                      accept=req.accept, payload=req.payload)  # fmt: skip
    return DeviceResponse(a.code, a.content_format, a.payload)


@pytest.mark.parametrize("cf", [CF_SENML_JSON, CF_SENML_CBOR])
def test_read_composite_round_trip(cf: int) -> None:
    req = ops.read_composite(["/3/0/0", "/3303/0/5700", "/1/0/1"], accept=cf)
    assert (req.method, req.uri_path, req.content_format, req.accept) == ("FETCH", (), cf, cf)
    names = json.loads(req.payload) if cf == CF_SENML_JSON else cbor2.loads(req.payload)
    key = "n" if cf == CF_SENML_JSON else 0
    assert [x[key] for x in names] == ["/3/0/0", "/3303/0/5700", "/1/0/1"]
    response = _ask(_client(), req)
    assert response.code == "2.05" and response.content_format == cf
    result = interpret(req, response, now=NOW)
    values = {str(r.path): (r.type, r.value) for r in result.records}
    assert values == {
        "/3/0/0": (ValueType.STRING, "CORE-M"),
        "/3303/0/5700": (ValueType.FLOAT, 21.5),
        "/1/0/1": (ValueType.INTEGER, 300),
    }
    assert result.to_json()["operation"] == "read-composite"


def test_read_composite_refusals_and_a_record_not_asked_for() -> None:
    with pytest.raises(InvalidArgument, match=r"1\.\.64 paths"):
        ops.read_composite([])
    with pytest.raises(InvalidArgument, match="twice"):
        ops.read_composite(["/3/0", "/3/0"])
    with pytest.raises(InvalidArgument, match="SenML"):
        ops.read_composite(["/3/0"], accept=CF_TLV)
    with pytest.raises(InvalidArgument, match="composite operation applies to"):
        ops.read_composite(["/"])
    req = ops.read_composite(["/3/0/0"])
    stray = DeviceResponse("2.05", CF_SENML_JSON, b'[{"n":"/3/0/1","vs":"x"}]')
    with pytest.raises(InvalidArgument, match="was not asked for"):
        interpret(req, stray, now=NOW)
    # Missing paths are left out by the client; none at all: 4.04.
    assert _ask(_client(), ops.read_composite(["/3/0/0", "/9/0"])).code == "2.05"
    assert _ask(_client(), ops.read_composite(["/9/0"])).code == "4.04"


@pytest.mark.parametrize("cf", [CF_SENML_JSON, CF_SENML_CBOR])
def test_write_composite(cf: int) -> None:
    client = _client()
    recs = [
        Record(P("/1/0/2"), ValueType.INTEGER, 7),
        Record(P("/3/0/14"), ValueType.STRING, "+02:00"),
        Record(P("/3303/0/5750"), ValueType.STRING, "fridge"),
    ]
    req = ops.write_composite(recs, content_format=cf)
    assert (req.method, req.uri_path, req.content_format) == ("iPATCH", (), cf)
    response = _ask(client, req)
    assert interpret(req, response, now=NOW).code == "2.04"
    assert client.values[P("/1/0/2")] == 7 and client.values[P("/3303/0/5750")] == "fridge"
    # All or nothing at the client: one read-only value refuses the lot.
    bad = DeviceRequest(
        Operation.WRITE_COMPOSITE, Lwm2mPath(), "iPATCH", (), content_format=CF_SENML_JSON,
        payload=b'[{"n":"/1/0/2","v":9},{"n":"/3/0/9","v":5}]',
    )  # fmt: skip
    assert _ask(client, bad).code == "4.05" and client.values[P("/1/0/2")] == 7


def test_write_composite_checked_against_the_model() -> None:
    with pytest.raises(InvalidArgument, match="not writable"):
        ops.write_composite([Record(P("/3/0/9"), ValueType.INTEGER, 5)])
    with pytest.raises(InvalidArgument, match=r"takes an? integer"):
        ops.write_composite([Record(P("/1/0/2"), ValueType.STRING, "5")])
    with pytest.raises(InvalidArgument, match="at least one"):
        ops.write_composite([])


def test_observe_composite_and_cancel_share_one_key() -> None:
    obs = ops.observe_composite(["/3303/0/5700", "/3/0/9"])
    cancel = ops.cancel_observe_composite(["/3303/0/5700", "/3/0/9"])
    assert (obs.observe, cancel.observe) == (0, 1)
    assert obs.observe_key == cancel.observe_key != ops.observe("/3303/0/5700").observe_key
    assert ops.as_read(obs).operation is Operation.READ_COMPOSITE
    assert ops.as_read(ops.observe("/3/0")).operation is Operation.READ
    table = ObservationTable()
    table.add(b"t1", "r", "d", "s", obs, Owner.OPERATOR, now=NOW)
    table.add(b"t2", "r", "d", "s", ops.observe("/3303/0/5700"), Owner.AUTO, now=NOW)
    found = table.for_key("r", cancel.observe_key)
    assert found is not None and found.token == b"t1"
    assert table.for_path("r", P("/3303/0/5700")).token == b"t2"  # type: ignore[union-attr]
    table.remove(b"t1")
    assert table.for_key("r", cancel.observe_key) is None


def test_composite_requests_travel_between_nodes() -> None:
    req = ops.observe_composite(["/3303/0", "/3/0/9"], accept=CF_SENML_CBOR)
    back = DeviceRequest.from_json(json.loads(json.dumps(req.to_json())))
    assert back == req
    w = ops.write_composite([Record(P("/1/0/2"), ValueType.INTEGER, 1)])
    assert DeviceRequest.from_json(json.loads(json.dumps(w.to_json()))) == w


def test_a_1_0_client_refuses_composite() -> None:
    client = SimulatedClient("ep", clock=lambda: NOW, version="1.0")
    assert _ask(client, ops.read_composite(["/3/0/0"])).code == "4.05"
