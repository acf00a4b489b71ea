"""OMA DDF object definitions: the parser, the shipped core objects, an operator's folder,
and the model's use in write validation and in typing decoded values."""

from __future__ import annotations

from pathlib import Path

import pytest

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.content import CF_OPAQUE, CF_SENML_JSON, CF_TEXT, CF_TLV, decode
from corem_ingress.lwm2m.ddf import parse_ddf
from corem_ingress.lwm2m.linkformat import Link
from corem_ingress.lwm2m.model import Lwm2mPath, ValueType, parse_range
from corem_ingress.lwm2m.objects import DEFAULT_MODEL, load_model, read_folder
from corem_ingress.lwm2m.operations import DeviceResult, Operation
from corem_ingress.lwm2m.records import Record

pytestmark = pytest.mark.unit

TEST_DDF = Path(__file__).parent / "ddf"
P = Lwm2mPath.parse


def _ddf(items: str, *, oid: str = "42", extra: str = "") -> bytes:
    return f"""<?xml version="1.0"?>
<LWM2M><Object ObjectType="MODefinition"><Name>X</Name><ObjectID>{oid}</ObjectID>
<ObjectVersion>1.0</ObjectVersion><MultipleInstances>Single</MultipleInstances>
<Mandatory>Optional</Mandatory><Resources>{items}</Resources></Object>{extra}</LWM2M>""".encode()


def _item(rid: str = "0", ops_: str = "RW", typ: str = "Integer", rng: str = "") -> str:
    return (
        f'<Item ID="{rid}"><Name>r{rid}</Name><Operations>{ops_}</Operations>'
        "<MultipleInstances>Single</MultipleInstances><Mandatory>Optional</Mandatory>"
        f"<Type>{typ}</Type><RangeEnumeration>{rng}</RangeEnumeration></Item>"
    )


def test_shipped_core_objects_as_in_the_oma_registry() -> None:
    assert DEFAULT_MODEL.object_ids() == [0, 1, 2, 3, 4, 5, 6, 7, 3303]
    device = DEFAULT_MODEL.object(3)
    assert device is not None
    assert (device.name, device.version, device.multiple_instances, device.mandatory) == (
        "Device", "1.1", False, True,
    )  # fmt: skip
    battery = device.resources[9]
    assert (battery.name, battery.type, battery.operations, battery.range, battery.units) == (
        "Battery Level", ValueType.INTEGER, "R", "0..100", "/100",
    )  # fmt: skip
    reboot = device.resources[4]
    assert (reboot.type, reboot.operations, reboot.mandatory) == (ValueType.NONE, "E", True)
    error_code = device.resources[11]
    assert error_code.multiple and error_code.mandatory
    server = DEFAULT_MODEL.object(1)
    assert server is not None and server.multiple_instances and server.mandatory
    assert server.resources[0].range == "1..65534"
    assert DEFAULT_MODEL.resource(0, 5) is not None  # Security: Secret Key
    assert DEFAULT_MODEL.resource(0, 5).operations == ""  # type: ignore[union-attr]
    assert DEFAULT_MODEL.resource(1, 11).type is ValueType.UNSIGNED  # type: ignore[union-attr]
    assert DEFAULT_MODEL.resource(6, 0).type is ValueType.FLOAT  # type: ignore[union-attr]
    assert DEFAULT_MODEL.resource(3303, 5700).name == "Sensor Value"  # type: ignore[union-attr]
    assert DEFAULT_MODEL.resource(5, 0).operations == "W"  # type: ignore[union-attr]


def test_parse_a_document_with_every_field() -> None:
    [obj] = parse_ddf(_ddf(_item("1", "RW", "Float", "-40..85") + _item("2", "E", "")))
    assert obj.id == 42 and obj.name == "X" and not obj.multiple_instances
    assert obj.resources[1].type is ValueType.FLOAT and obj.resources[1].range == "-40..85"
    assert obj.resources[2].type is ValueType.NONE and obj.resources[2].executable


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<LWM2M>", "not well-formed"),
        (b"<Other/>", "not <LWM2M>"),
        (b"<LWM2M/>", "defines no <Object>"),
        (_ddf(_item(typ="Blob")), "unknown Type"),
        (_ddf(_item(ops_="RX")), "Operations"),
        (_ddf(_item(typ="")), "needs a Type"),
        (_ddf(_item() + _item()), "defined twice"),
        (_ddf(_item(), oid="65535"), "ObjectID"),
        (_ddf(_item(rid="x")), "Item ID"),
        (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa">]><LWM2M>&a;</LWM2M>', "DTD"),
        ('<?xml version="1.0" encoding="utf-16"?><!DOCTYPE x><LWM2M/>'.encode("utf-16"), "DTD"),
    ],
)
def test_malformed_documents_are_refused_by_name(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_ddf(data, source="f.xml")


def test_folder_adds_objects_and_names_a_bad_file(tmp_path: Path) -> None:
    model = load_model(str(TEST_DDF))
    assert model.object_ids() == [0, 1, 2, 3, 4, 5, 6, 7, 3303, 31024]
    assert model.resource(31024, 1).range == "0..255"  # type: ignore[union-attr]
    (tmp_path / "ok.xml").write_bytes(_ddf(_item()))
    (tmp_path / "bad.xml").write_bytes(b"<LWM2M><Object>")
    with pytest.raises(InvalidArgument, match=r"bad\.xml"):
        read_folder(tmp_path)
    with pytest.raises(InvalidArgument, match="not a directory"):
        read_folder(tmp_path / "missing")


def test_folder_may_redefine_a_shipped_object(tmp_path: Path) -> None:
    (tmp_path / "3303.xml").write_bytes(_ddf(_item("5700", "R", "String"), oid="3303"))
    model = DEFAULT_MODEL.with_objects(read_folder(tmp_path))
    assert model.resource_type(3303, 5700) is ValueType.STRING
    assert model.resource(3303, 5601) is None


@pytest.mark.parametrize(
    ("text", "value", "inside"),
    [
        ("0..100", 100, True),
        ("0..100", 101, False),
        ("-40..85", -40.5, False),
        ("16,32,48", b"x" * 32, True),
        ("16,32,48", b"x" * 33, False),
        ("0..3", "abcd", False),
        ("U,UQ", "Q", True),  # an enumeration of words is not enforced
        ("", 10**9, True),
    ],
)
def test_range(text: str, value: object, inside: bool) -> None:
    from corem_ingress.lwm2m.model import ResourceDef

    res = ResourceDef(1, "r", ValueType.INTEGER, "RW", range=text)
    assert (res.out_of_range(value) is None) is inside
    assert parse_range("a..b") is None


def test_writes_are_checked_against_the_model() -> None:
    model = load_model(str(TEST_DDF))
    ok = ops.write("/31024/1/1", [Record(P("/31024/1/1"), ValueType.INTEGER, 255)], model=model)
    assert ok.payload
    with pytest.raises(InvalidArgument, match=r"value must be in 0\.\.255"):
        ops.write("/31024/1/1", [Record(P("/31024/1/1"), ValueType.INTEGER, 256)], model=model)
    with pytest.raises(InvalidArgument, match=r"takes an? integer value"):
        ops.write("/31024/1/1", [Record(P("/31024/1/1"), ValueType.STRING, "x")], model=model)
    with pytest.raises(InvalidArgument, match="not writable"):
        ops.write("/3/0/9", [Record(P("/3/0/9"), ValueType.INTEGER, 50)])
    with pytest.raises(InvalidArgument, match="not executable"):
        ops.execute("/31024/1/1", model=model)
    # Without the folder, 31024 is unknown: anything goes to the device.
    ops.write("/31024/1/1", [Record(P("/31024/1/1"), ValueType.INTEGER, 256)])


@pytest.mark.parametrize(
    ("payload", "cf"),
    [(b"7", CF_TEXT), (b'[{"n":"/31024/1/1","vs":"7"}]', CF_SENML_JSON), (b"\x07", CF_OPAQUE)],
)
def test_decoded_values_typed_by_a_loaded_model(payload: bytes, cf: int) -> None:
    model = load_model(str(TEST_DDF))
    if cf == CF_OPAQUE:  # opaque bytes never become an integer
        with pytest.raises(InvalidArgument):
            decode(payload, cf, "/31024/1/1", now=0.0, model=model)
        return
    [rec] = decode(payload, cf, "/31024/1/1", now=0.0, model=model)
    assert (rec.type, rec.value) == (ValueType.INTEGER, 7)
    tlv = bytes([0b11000001, 1, 7])  # resource 1, one byte: integer 7
    [rec] = decode(tlv, CF_TLV, "/31024/1", now=0.0, model=model)
    assert (rec.type, rec.value) == (ValueType.INTEGER, 7)


def test_discover_output_names_objects_and_resources() -> None:
    result = DeviceResult(
        Operation.DISCOVER,
        P("/3"),
        "2.05",
        links=(Link("/3"), Link("/3/0"), Link("/3/0/9", (("pmin", "10"),)), Link("/9/0/1")),
    )
    links = result.to_json(DEFAULT_MODEL)["links"]
    assert [(x["target"], x["name"]) for x in links] == [  # type: ignore[union-attr,index]
        ("/3", "Device"), ("/3/0", "Device"), ("/3/0/9", "Battery Level"), ("/9/0/1", None),
    ]  # fmt: skip
    assert links[2]["params"] == {"pmin": "10"}  # type: ignore[index]


def test_discover_names_behind_a_client_root_path() -> None:
    result = DeviceResult(
        Operation.DISCOVER, P("/3"), "2.05", links=(Link("/lwm2m/3/0/9"), Link("/other/3"))
    )
    links = result.to_json(DEFAULT_MODEL, root="/lwm2m")["links"]
    assert [x["name"] for x in links] == ["Battery Level", None]  # type: ignore[index,union-attr]
