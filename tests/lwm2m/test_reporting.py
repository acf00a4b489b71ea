"""Observe plan, Send (POST /dp) and notifications into uplink envelopes. Pure, no I/O."""

import json

import pytest

from corem_ingress.core.errors import InvalidArgument, NotFound
from corem_ingress.core.uplink import Transport, Uplink
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.client_objects import SimulatedClient
from corem_ingress.lwm2m.content import CF_TLV
from corem_ingress.lwm2m.linkformat import parse_object_list
from corem_ingress.lwm2m.model import Lwm2mPath
from corem_ingress.lwm2m.registration import MethodNotAllowed, Registration
from corem_ingress.lwm2m.reporting import parse_send, paths_to_observe, uplink

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0
OBJECTS = parse_object_list("</1/0>,</3/0>,</3303/0>,</3303/1>")
REG = Registration("r1", "SN-1", "acme", "d-1", "psk_1", "psk", "1.1", 300, "U", False, None,
                   OBJECTS, "node-a", "s1", NOW, NOW)  # fmt: skip


def test_paths_to_observe_keeps_what_the_client_announced() -> None:
    got = paths_to_observe(["/3/0", "/3303", "/5", "/3303/2", "/3/0", "/3303/1/5700"], OBJECTS)
    assert [str(p) for p in got] == ["/3/0", "/3303", "/3303/1/5700"]
    with pytest.raises(InvalidArgument):
        paths_to_observe(["/"], OBJECTS)
    with pytest.raises(InvalidArgument):
        paths_to_observe(["3/0"], OBJECTS)


def test_send_from_the_simulated_client_becomes_an_uplink() -> None:
    client = SimulatedClient("SN-1", clock=lambda: NOW)
    cf, payload = client.send_payload(["/3303/0/5700"])
    records = parse_send("POST", ["dp"], cf, payload, now=NOW)
    up = uplink(REG, records, source="send", path=None, now=NOW)
    assert up.transport is Transport.LWM2M and up.kind.value == "telemetry"
    assert up.payload == {
        "endpoint": "SN-1", "registration_id": "r1", "source": "send", "path": None,
        "records": [{"path": "/3303/0/5700", "type": "float", "value": 21.5, "time": NOW}],
    }  # fmt: skip
    fields = up.to_fields()
    assert Uplink.from_fields(fields) == up
    json.loads(fields["payload"])


def test_send_refusals() -> None:
    with pytest.raises(NotFound):
        parse_send("POST", ["dp", "x"], 110, b"[]", now=NOW)
    with pytest.raises(MethodNotAllowed):
        parse_send("GET", ["dp"], 110, b"[]", now=NOW)
    with pytest.raises(InvalidArgument):
        parse_send("POST", ["dp"], CF_TLV, b"\xc1\x09\x64", now=NOW)
    with pytest.raises(InvalidArgument):
        parse_send("POST", ["dp"], 110, b"[]", now=NOW)
    with pytest.raises(InvalidArgument):
        parse_send("POST", ["dp"], 110, b"[{", now=NOW)


def test_notification_becomes_an_uplink() -> None:
    client = SimulatedClient("SN-1", clock=lambda: NOW)
    obs = ops.observe("/3303/0")
    client.set_temperature(23.0)
    r = client.handle(obs.method, obs.uri_path, accept=obs.accept)
    records = ops.notification_records(obs, ops.DeviceResponse(r.code, r.content_format, r.payload),
                                       now=NOW)  # fmt: skip
    up = uplink(REG, records, source="notify", path=Lwm2mPath.parse("/3303/0"), now=NOW)
    assert up.payload["path"] == "/3303/0"  # type: ignore[index,call-overload]
    values = {rec["path"]: rec["value"] for rec in up.payload["records"]}  # type: ignore[index,union-attr,call-overload]
    assert values["/3303/0/5700"] == 23.0
    with pytest.raises(InvalidArgument):
        uplink(REG, records, source="other", path=None, now=NOW)
