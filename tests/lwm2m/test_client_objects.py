"""The simulated client's objects driven by the server's request builders: no I/O, fake clock."""

import pytest

from corem_ingress.core.errors import IngressError, InvalidArgument, NotFound
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.client_objects import (
    ClientResponse,
    Executed,
    LifetimeChanged,
    RebootRequested,
    SimulatedClient,
    UpdateTriggered,
)
from corem_ingress.lwm2m.content import (
    CF_SENML_CBOR,
    CF_SENML_JSON,
    CF_TEXT,
    CF_TLV,
    Record,
    decode,
)
from corem_ingress.lwm2m.linkformat import parse_links
from corem_ingress.lwm2m.model import Lwm2mPath, ValueType
from corem_ingress.lwm2m.registration import Registrar, parse_request

pytestmark = pytest.mark.unit

P = Lwm2mPath.parse
V = ValueType


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def ask(client: SimulatedClient, req: ops.DeviceRequest, now: float = 0.0) -> ops.DeviceResult:
    """One server request through the client and back, as the CoAP layers would carry it."""
    r = client.handle(
        req.method,
        req.uri_path,
        uri_query=req.uri_query,
        content_format=req.content_format,
        accept=req.accept,
        payload=req.payload,
    )
    return ops.interpret(req, ops.DeviceResponse(r.code, r.content_format, r.payload), now=now)


@pytest.fixture
def client() -> SimulatedClient:
    return SimulatedClient("SN-0001", clock=Clock(), lifetime_s=120)


def test_registration_payload_is_accepted_by_the_server_side(client: SimulatedClient) -> None:
    req = parse_request("POST", ["rd"], client.register_query(), 40, client.register_payload())
    assert req.endpoint == "SN-0001" and req.lifetime_s == 120 and req.version == "1.1"  # type: ignore[union-attr]
    assert req.objects.object_ids() == [1, 3, 3303]  # type: ignore[union-attr]
    assert req.objects.content_formats == (CF_SENML_CBOR, CF_SENML_JSON, CF_TLV)  # type: ignore[union-attr]
    old = SimulatedClient("SN-2", clock=Clock(), version="1.0")
    req10 = parse_request("POST", ["rd"], old.register_query(), 40, old.register_payload())
    assert Registrar().bound_name is not None and req10.version == "1.0"  # type: ignore[union-attr]


def test_read_device_object(client: SimulatedClient) -> None:
    res = ask(client, ops.read("/3/0"))
    got = {str(r.path): r.value for r in res.records}
    assert got["/3/0/0"] == "CORE-M" and got["/3/0/2"] == "SN-0001"
    assert got["/3/0/13"] == 1_700_000_000 and got["/3/0/11/0"] == 0
    assert "/3/0/4" not in got  # executable: no value
    assert [r.type for r in res.records if str(r.path) == "/3/0/13"] == [V.TIME]


@pytest.mark.parametrize("accept", [None, CF_TLV, CF_SENML_JSON, CF_SENML_CBOR])
def test_read_in_every_format(client: SimulatedClient, accept: int | None) -> None:
    res = ask(client, ops.read("/3303/0", accept=accept))
    assert Record(P("/3303/0/5700"), V.FLOAT, 21.5) in res.records
    single = ask(client, ops.read("/3303/0/5700", accept=accept))
    assert single.records == (Record(P("/3303/0/5700"), V.FLOAT, 21.5),)


def test_lwm2m_10_client_answers_tlv(client: SimulatedClient) -> None:
    old = SimulatedClient("SN-2", clock=Clock(), version="1.0")
    r = old.handle("GET", ["1", "0"])
    assert r.code == "2.05" and r.content_format == CF_TLV
    assert decode(r.payload, r.content_format, "/1/0", now=0)[1] == Record(
        P("/1/0/1"), V.INTEGER, 300
    )


def test_read_refusals(client: SimulatedClient) -> None:
    for req, error in [
        (ops.read("/3/1"), NotFound),
        (ops.read("/5"), NotFound),
        (ops.read("/3/0/99"), NotFound),
        (ops.read("/3/0/4"), IngressError),
    ]:
        with pytest.raises(error):
            ask(client, req)
    assert client.handle("GET", ["3", "0"], accept=50).code == "4.06"
    assert client.handle("GET", ["x"]).code == "4.04"


def test_write_lifetime_raises_an_update_event(client: SimulatedClient) -> None:
    req = ops.write("/1/0/1", [Record(P("/1/0/1"), V.INTEGER, 60)], content_format=CF_TEXT)
    assert ask(client, req).code == "2.04"
    assert client.lifetime_s == 60
    assert client.next_event() == LifetimeChanged(60)
    assert client.next_event() is None
    assert "lt=60" in client.register_query()


@pytest.mark.parametrize("cf", [CF_TLV, CF_SENML_JSON, CF_SENML_CBOR])
def test_write_instance_in_every_format(client: SimulatedClient, cf: int) -> None:
    recs = [
        Record(P("/3/0/14"), V.STRING, "+01:00"),
        Record(P("/3/0/15"), V.STRING, "Europe/Paris"),
    ]
    assert ask(client, ops.write("/3/0", recs, content_format=cf, replace=False)).code == "2.04"
    got = {str(r.path): r.value for r in ask(client, ops.read("/3/0")).records}
    assert got["/3/0/14"] == "+01:00" and got["/3/0/15"] == "Europe/Paris"


def test_write_refusals(client: SimulatedClient) -> None:
    # The server-side builder refuses read-only resources; a raw request gets 4.05 from the client.
    assert (
        client.handle("PUT", ["3", "0", "0"], content_format=CF_TEXT, payload=b"x").code == "4.05"
    )
    assert (
        client.handle("PUT", ["1", "0", "1"], content_format=CF_TEXT, payload=b"x").code == "4.00"
    )
    assert (
        client.handle("PUT", ["3", "0", "14"], content_format=CF_TLV, payload=b"\xc8").code
        == "4.00"
    )
    assert client.handle("PUT", ["3"], content_format=CF_TEXT, payload=b"1").code == "4.05"
    assert client.handle("PUT", ["3", "5"], content_format=CF_TEXT, payload=b"1").code == "4.04"
    assert client.handle("DELETE", ["3", "0"]).code == "4.05"


def test_execute(client: SimulatedClient) -> None:
    assert ask(client, ops.execute("/3/0/4")).code == "2.04"
    assert client.next_event() == Executed(P("/3/0/4"), "")
    assert client.next_event() == RebootRequested()
    ask(client, ops.execute("/1/0/8", "0='x'"))
    assert client.next_event() == Executed(P("/1/0/8"), "0='x'")
    assert client.next_event() == UpdateTriggered()
    client.set_temperature(30.0)
    client.set_temperature(10.0)
    ask(client, ops.execute("/3303/0/5605"))
    got = {str(r.path): r.value for r in ask(client, ops.read("/3303/0")).records}
    assert got["/3303/0/5601"] == got["/3303/0/5602"] == 10.0
    assert client.handle("POST", ["3", "0", "0"]).code == "4.05"


def test_temperature_readings_and_send(client: SimulatedClient) -> None:
    clock = Clock()
    c = SimulatedClient("SN-3", clock=clock)
    clock.now += 10
    changed = c.set_temperature(25.25)
    assert changed[0] == Record(P("/3303/0/5700"), V.FLOAT, 25.25)
    assert Record(P("/3303/0/5518"), V.TIME, 1_700_000_010) in changed
    for cbor in (False, True):
        cf, payload = c.send_payload(["/3303/0/5700", "/3/0/9"], cbor=cbor)
        recs = decode(payload, cf, "/", now=0)
        assert [(str(r.path), r.value, r.time) for r in recs] == [
            ("/3303/0/5700", 25.25, 1_700_000_010.0), ("/3/0/9", 100, 1_700_000_010.0),
        ]  # fmt: skip
    with pytest.raises(InvalidArgument):
        c.send_payload(["/4"])


def test_discover(client: SimulatedClient) -> None:
    res = ask(client, ops.discover("/3303"))
    targets = [link.target for link in res.links]
    assert targets[:2] == ["/3303", "/3303/0"] and "/3303/0/5700" in targets
    dev = ask(client, ops.discover("/3/0"))
    assert dict(next(lk for lk in dev.links if lk.target == "/3/0/7").params) == {"dim": "1"}
    assert client.handle("GET", ["3", "0", "7", "0"], accept=40).code == "4.05"
    assert parse_links(client.handle("GET", ["1"], accept=40).payload)[0].target == "/1"


def test_write_attributes_are_acknowledged(client: SimulatedClient) -> None:
    assert ask(client, ops.write_attributes("/3303/0/5700", pmin=5)).code == "2.04"
    assert client.handle("PUT", ["3303", "0"], uri_query=["pmax=9"]) == ClientResponse("2.04")
