"""Device-management requests as data; the device's answers interpreted. Pure, no I/O."""

import pytest

from corem_ingress.core.errors import (
    DeviceFailed,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.content import (
    CF_LINK_FORMAT,
    CF_SENML_CBOR,
    CF_SENML_JSON,
    CF_TEXT,
    CF_TLV,
    Record,
)
from corem_ingress.lwm2m.linkformat import ObjectList, parse_object_list
from corem_ingress.lwm2m.model import Lwm2mPath, ValueType
from corem_ingress.lwm2m.operations import DeviceRequest, DeviceResponse, Operation
from corem_ingress.lwm2m.registration import MethodNotAllowed, Registration

pytestmark = pytest.mark.unit

P = Lwm2mPath.parse
NOW = 1_700_000_000.0


def test_read_observe_cancel_discover_are_gets() -> None:
    r = ops.read("/3/0/0")
    assert (r.method, r.uri_path, r.observe, r.payload) == ("GET", ("3", "0", "0"), None, b"")
    o = ops.observe("/3303/0", accept=CF_SENML_JSON)
    assert (o.method, o.observe, o.accept) == ("GET", 0, CF_SENML_JSON)
    c = ops.cancel_observe("/3303/0")
    assert (c.method, c.observe, c.operation) == ("GET", 1, Operation.CANCEL_OBSERVE)
    d = ops.discover("/3")
    assert (d.method, d.accept) == ("GET", CF_LINK_FORMAT)
    assert ops.read("/3/0", root="/lwm2m").uri_path == ("lwm2m", "3", "0")


@pytest.mark.parametrize(
    "build",
    [
        lambda: ops.read("/"),
        lambda: ops.read("3/0"),
        lambda: ops.read("/3/0/"),
        lambda: ops.read("/65535"),
        lambda: ops.read("/3/0/0/0/0"),
        lambda: ops.read("/-1"),
        lambda: ops.observe("/"),
        lambda: ops.discover("/3/0/7/0"),
        lambda: ops.execute("/3/0"),
        lambda: ops.execute("/3/0/0"),  # Manufacturer is not executable
        lambda: ops.execute("/3/0/4", "x"),
        lambda: ops.execute("/3/0/4", "0='a'b'"),
        lambda: ops.write("/3", [Record(P("/3/0/14"), ValueType.STRING, "+01:00")]),
        lambda: ops.write("/3/0", []),
        lambda: ops.write("/3/0/0", [Record(P("/3/0/0"), ValueType.STRING, "x")]),  # read-only
        lambda: ops.write("/1/0/1", [Record(P("/1/0/1"), ValueType.STRING, "60")]),  # type
        lambda: ops.write("/1/0", [Record(P("/3/0/14"), ValueType.STRING, "x")]),  # outside
        lambda: ops.write("/1/0/1/0", [Record(P("/1/0/1/0"), ValueType.INTEGER, 1)]),  # single
        lambda: ops.write("/1/0", [Record(P("/1/0/1"), ValueType.INTEGER, 1)], content_format=50),
        lambda: ops.write(
            "/1/0", [Record(P("/1/0/1"), ValueType.INTEGER, 1)], content_format=CF_TEXT
        ),
        lambda: ops.write_attributes("/3303/0/5700"),
        lambda: ops.write_attributes("/3303/0/5700", pmin=10, pmax=5),
        lambda: ops.write_attributes("/3303/0/5700", pmin=-1),
        lambda: ops.write_attributes("/3303/0/5700", pmin=1.5),  # type: ignore[arg-type]
        lambda: ops.write_attributes("/3303/0/5700", gt=10, lt=20),
        lambda: ops.write_attributes("/3303/0/5700", gt=20, lt=10, st=6),
        lambda: ops.write_attributes("/3303/0/5700", st=-1),
        lambda: ops.write_attributes("/3303/0/5700", gt=float("nan")),
        lambda: ops.write_attributes("/3303/0", gt=1),  # gt on an instance
        lambda: ops.write_attributes("/3/0/0", gt=1),  # gt on a string
        lambda: ops.write_attributes("/3303/0/5700", clear=["bogus"]),
        lambda: ops.write_attributes("/3303/0/5700", pmin=1, clear=["pmin"]),
        lambda: ops.write_attributes("/3303/0/5700", epmin=5, epmax=1),
    ],
)
def test_invalid_requests_are_refused(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument):
        build()


def test_write_builds_put_or_post_with_the_payload() -> None:
    recs = [Record(P("/1/0/1"), ValueType.INTEGER, 60), Record(P("/1/0/7"), ValueType.STRING, "UQ")]
    w = ops.write("/1/0", recs)
    assert (w.method, w.content_format, w.uri_path) == ("PUT", CF_TLV, ("1", "0"))
    assert w.payload == bytes.fromhex("C1013C") + bytes.fromhex("C2075551")
    p = ops.write("/1/0", recs, content_format=CF_SENML_JSON, replace=False)
    assert p.method == "POST" and p.payload.startswith(b'[{"n":"/1/0/1","v":60}')
    t = ops.write("/3/0/14", [Record(P("/3/0/14"), ValueType.STRING, "+01:00")], content_format=0)
    assert t.payload == b"+01:00"
    # Unknown objects are not second-guessed.
    ops.write("/9999/0", [Record(P("/9999/0/1"), ValueType.OPAQUE, b"\x00")])


def test_execute_and_write_attributes() -> None:
    e = ops.execute("/3/0/4")
    assert (e.method, e.payload, e.content_format) == ("POST", b"", None)
    e2 = ops.execute("/9/0/2", "0='http://x/fw.bin',1")
    assert (e2.payload, e2.content_format) == (b"0='http://x/fw.bin',1", CF_TEXT)
    a = ops.write_attributes(
        "/3303/0/5700", pmin=10, pmax=60, gt=30.5, lt=10, st=1, clear=["epmin"]
    )
    assert a.method == "PUT" and a.payload == b""
    assert a.uri_query == ("pmin=10", "pmax=60", "gt=30.5", "lt=10", "st=1", "epmin")
    assert ops.write_attributes("/3303", pmax=300).uri_query == ("pmax=300",)


def test_device_request_json_round_trip() -> None:
    recs = [Record(P("/1/0/1"), ValueType.INTEGER, 60)]
    for req in [ops.read("/3/0"), ops.write("/1/0", recs), ops.observe("/3303/0"),
                ops.write_attributes("/3303/0/5700", pmin=1), ops.execute("/3/0/4")]:  # fmt: skip
        assert DeviceRequest.from_json(req.to_json()) == req
    for bad in [None, {}, {**ops.read("/3").to_json(), "method": "FETCH"},
                {**ops.read("/3").to_json(), "payload": "!!"},
                {**ops.read("/3").to_json(), "observe": 7}]:  # fmt: skip
        with pytest.raises(InvalidArgument):
            DeviceRequest.from_json(bad)
    resp = DeviceResponse("2.05", CF_TEXT, b"21.5")
    assert DeviceResponse.from_json(resp.to_json()) == resp
    with pytest.raises(InvalidArgument):
        DeviceResponse.from_json({"code": "9.99"})


def test_interpret_success() -> None:
    res = ops.interpret(ops.read("/3303/0/5700"), DeviceResponse("2.05", CF_TEXT, b"21.5"), now=NOW)
    assert res.records == (Record(P("/3303/0/5700"), ValueType.FLOAT, 21.5),)
    assert res.to_json() == {
        "operation": "read", "path": "/3303/0/5700", "code": "2.05",
        "records": [{"path": "/3303/0/5700", "type": "float", "value": 21.5, "time": None}],
    }  # fmt: skip
    d = ops.interpret(ops.discover("/3/0"), DeviceResponse("2.05", 40, b"</3/0/0>,</3/0/7>;dim=2"),
                      now=NOW)  # fmt: skip
    assert d.to_json()["links"] == [
        {"target": "/3/0/0", "params": {}}, {"target": "/3/0/7", "params": {"dim": "2"}},
    ]  # fmt: skip
    w = ops.interpret(ops.execute("/3/0/4"), DeviceResponse("2.04"), now=NOW)
    assert w.to_json() == {"operation": "execute", "path": "/3/0/4", "code": "2.04"}


@pytest.mark.parametrize(
    ("code", "error", "coap"),
    [
        ("4.00", InvalidArgument, "4.00"),
        ("4.01", PermissionDenied, "4.03"),
        ("4.03", PermissionDenied, "4.03"),
        ("4.04", NotFound, "4.04"),
        ("4.05", MethodNotAllowed, "4.05"),
        ("4.06", InvalidArgument, "4.00"),
        ("4.12", FailedPrecondition, "4.12"),
        ("4.15", InvalidArgument, "4.00"),
        # The device's own failure: 502 with its code in the body, never the retryable 503.
        ("5.00", DeviceFailed, "5.02"),
        ("5.01", DeviceFailed, "5.02"),
        ("5.03", DeviceFailed, "5.02"),
        ("2.04", DeviceFailed, "5.02"),  # a success code other than the expected one
    ],
)
def test_interpret_errors(code: str, error: type, coap: str) -> None:
    with pytest.raises(error) as info:
        ops.interpret(ops.read("/3/0/0"), DeviceResponse(code), now=NOW)
    assert info.value.coap_code == coap
    assert code in info.value.message
    if error is DeviceFailed:
        assert info.value.http_status == 502
        assert info.value.to_json()["error"]["coap_code"] == code


def test_interpret_malformed_body_and_timeout() -> None:
    with pytest.raises(InvalidArgument):
        ops.interpret(ops.read("/3/0/9"), DeviceResponse("2.05", CF_TEXT, b"abc"), now=NOW)
    with pytest.raises(InvalidArgument):
        ops.interpret(ops.discover("/3"), DeviceResponse("2.05", CF_TEXT, b"</3>"), now=NOW)
    assert ops.timeout_error().coap_code == "5.03"


def _reg(version: str, objects: ObjectList) -> Registration:
    return Registration("r1", "SN", "acme", "d", "c", "psk", version, 60, "U", False, None,
                        objects, "n", "s", NOW, NOW)  # fmt: skip


def test_preferred_format() -> None:
    assert ops.preferred_format(None) == CF_TLV
    assert ops.preferred_format(_reg("1.0", parse_object_list("</3/0>"))) == CF_TLV
    cbor = parse_object_list('</>;rt="oma.lwm2m";ct="110 112",</3/0>')
    assert ops.preferred_format(_reg("1.1", cbor)) == CF_SENML_CBOR
    json_only = parse_object_list('</>;rt="oma.lwm2m";ct=110,</3/0>')
    assert ops.preferred_format(_reg("1.1", json_only)) == CF_SENML_JSON
    assert ops.preferred_format(_reg("1.1", parse_object_list("</3/0>"))) == CF_TLV
