"""Content formats into one JSON shape and back: spec vectors, refusals, property tests. No I/O."""

import base64
import json
import math

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m.content import (
    CF_CBOR,
    CF_LWM2M_JSON,
    CF_OPAQUE,
    CF_SENML_CBOR,
    CF_SENML_JSON,
    CF_TEXT,
    CF_TLV,
    Record,
    decode,
    encode,
    records_to_json,
)
from corem_ingress.lwm2m.model import (
    EMPTY_MODEL,
    Lwm2mPath,
    ObjectDef,
    ObjectModel,
    ResourceDef,
    ValueType,
)

pytestmark = pytest.mark.unit

P = Lwm2mPath.parse
V = ValueType
NOW = 1_700_000_000.0

# LwM2M 1.0 TS, 7.3.2.2 example: Read /3/0 of a single-instance Device object, in TLV.
DEVICE_TLV = bytes.fromhex(
    "C800144F70656E204D6F62696C6520416C6C69616E6365"
    "C801164C69676874776569676874204D324D20436C69656E74"
    "C80209333435303030313233"
    "C303312E30"
    "8606410001410105"
    "88070842000ED842011388"
    "87084100 7D42010384".replace(" ", "")
    + "C10964"
    "C10A0F"
    "830B410000"
    "C40D5182428F"
    "C60E2B30323A3030"
    "C11055"
)


def test_tlv_spec_example() -> None:
    recs = decode(DEVICE_TLV, CF_TLV, "/3/0", now=NOW)
    got = {str(r.path): (r.type, r.value) for r in recs}
    assert got["/3/0/0"] == (V.STRING, "Open Mobile Alliance")
    assert got["/3/0/1"] == (V.STRING, "Lightweight M2M Client")
    assert got["/3/0/3"] == (V.STRING, "1.0")
    assert got["/3/0/6/0"] == (V.INTEGER, 1) and got["/3/0/6/1"] == (V.INTEGER, 5)
    assert got["/3/0/7/0"] == (V.INTEGER, 3800) and got["/3/0/7/1"] == (V.INTEGER, 5000)
    assert got["/3/0/8/0"] == (V.INTEGER, 125) and got["/3/0/8/1"] == (V.INTEGER, 900)
    assert got["/3/0/9"] == (V.INTEGER, 100)
    assert got["/3/0/11/0"] == (V.INTEGER, 0)
    assert got["/3/0/13"] == (V.TIME, 1367491215)
    assert got["/3/0/14"] == (V.STRING, "+02:00")
    assert got["/3/0/16"] == (V.STRING, "U")
    assert len(recs) == 16
    # Re-encoding gives the same bytes (the example uses minimal integer sizes).
    assert encode(recs, CF_TLV, "/3/0") == DEVICE_TLV
    # The same read at /3 wraps it in an object-instance TLV; a wrapped /3/0 is accepted too.
    wrapped = encode(recs, CF_TLV, "/3")
    assert decode(wrapped, CF_TLV, "/3", now=NOW) == recs
    assert decode(wrapped, CF_TLV, "/3/0", now=NOW) == recs


def test_tlv_single_resource_and_instances() -> None:
    assert decode(bytes.fromhex("C10964"), CF_TLV, "/3/0/9", now=NOW) == [
        Record(P("/3/0/9"), V.INTEGER, 100)
    ]
    multi = bytes.fromhex("88070842000ED842011388")
    assert [r.value for r in decode(multi, CF_TLV, "/3/0/7", now=NOW)] == [3800, 5000]
    assert decode(bytes.fromhex("41010 5".replace(" ", "")), CF_TLV, "/3/0/6/1", now=NOW) == [
        Record(P("/3/0/6/1"), V.INTEGER, 5)
    ]


def test_tlv_unknown_resource_is_opaque() -> None:
    recs = decode(bytes.fromhex("C101FF"), CF_TLV, "/9999/0", now=NOW)
    assert recs == [Record(P("/9999/0/1"), V.OPAQUE, b"\xff")]
    assert recs[0].to_json() == {
        "path": "/9999/0/1",
        "type": "opaque",
        "value": "/w==",
        "time": None,
    }


def test_tlv_typed_values() -> None:
    model = ObjectModel(
        [ObjectDef(9, "t", "1.0", True, {
            1: ResourceDef(1, "f", V.FLOAT, "RW"),
            2: ResourceDef(2, "b", V.BOOLEAN, "RW"),
            3: ResourceDef(3, "o", V.OBJLNK, "RW"),
            4: ResourceDef(4, "u", V.UNSIGNED, "RW"),
        })]
    )  # fmt: skip
    data = (
        bytes.fromhex("C401") + bytes.fromhex("41AC0000")  # float32 21.5
        + bytes.fromhex("C10201")
        + bytes.fromhex("C40300030000")
        + bytes.fromhex("C104FF")
    )  # fmt: skip
    recs = decode(data, CF_TLV, "/9/0", now=NOW, model=model)
    assert [(r.type, r.value) for r in recs] == [
        (V.FLOAT, 21.5), (V.BOOLEAN, True), (V.OBJLNK, "3:0"), (V.UNSIGNED, 255),
    ]  # fmt: skip


def test_tlv_refusals_are_invalid_argument() -> None:
    for data, path in [
        (b"\xc8", "/3/0"),
        (b"\xc8\x09", "/3/0"),
        (bytes.fromhex("C80905AA"), "/3/0"),
        (bytes.fromhex("C30901AABB"), "/3/0"),
        (bytes.fromhex("C10D05"), "/3/0/9"),
        (bytes.fromhex("C10964"), "/"),
        (bytes.fromhex("C10264FF"), "/3/0"),
        (bytes.fromhex("C802FF"), "/3/0"),
        (bytes.fromhex("C10964"), "/3"),  # a resource where an instance belongs
    ]:
        with pytest.raises(InvalidArgument):
            decode(data, CF_TLV, path, now=NOW)


def test_senml_json_spec_example_and_shape() -> None:
    payload = json.dumps([
        {"bn": "/3/0/", "n": "0", "vs": "Open Mobile Alliance"},
        {"n": "9", "v": 95},
        {"n": "13", "v": 1367491215},
        {"n": "7/0", "v": 3800},
        {"bn": "/3303/0/", "n": "5700", "v": 21, "t": 1700000100},
    ]).encode()  # fmt: skip
    recs = decode(payload, CF_SENML_JSON, "/", now=NOW)
    assert records_to_json(recs) == [
        {"path": "/3/0/0", "type": "string", "value": "Open Mobile Alliance", "time": None},
        {"path": "/3/0/9", "type": "integer", "value": 95, "time": None},
        {"path": "/3/0/13", "type": "time", "value": 1367491215, "time": None},
        {"path": "/3/0/7/0", "type": "integer", "value": 3800, "time": None},
        {"path": "/3303/0/5700", "type": "float", "value": 21.0, "time": 1700000100},
    ]


def test_senml_base_time_relative_time_base_value_and_other_values() -> None:
    payload = json.dumps([
        {"bn": "/9/0/", "bt": 1700000000, "n": "1", "v": 1.5, "t": -10},
        {"n": "2", "vb": True},
        {"n": "3", "vd": base64.urlsafe_b64encode(b"\x00\xff\xfe").decode().rstrip("=")},
        {"n": "4", "vlo": "3:0"},
        {"bt": 0, "bn": "/9/1/", "bv": 10, "n": "1", "v": 5, "t": -2},
        {"n": "6", "v": 1, "xyz": "ignored"},
    ]).encode()  # fmt: skip
    recs = decode(payload, CF_SENML_JSON, "/9", now=NOW, model=EMPTY_MODEL)
    assert [(str(r.path), r.type, r.value, r.time) for r in recs] == [
        ("/9/0/1", V.FLOAT, 1.5, 1699999990),
        ("/9/0/2", V.BOOLEAN, True, 1700000000),
        ("/9/0/3", V.OPAQUE, b"\x00\xff\xfe", 1700000000),
        ("/9/0/4", V.OBJLNK, "3:0", 1700000000),
        ("/9/1/1", V.INTEGER, 15, NOW - 2),  # bt=0: t is relative to now
        ("/9/1/6", V.INTEGER, 11, NOW),
    ]


@pytest.mark.parametrize(
    "payload",
    [
        b"{}",
        b"[1]",
        b'[{"n": "/3/0/9"}]',  # no value
        b'[{"n": "/3/0/9", "v": 1, "vs": "x"}]',  # two values
        b'[{"n": "/3/0/9", "v": "1"}]',
        b'[{"n": "/3/0/9", "v": NaN}]',
        b'[{"n": "/3/0/9", "v": Infinity}]',
        b'[{"n": "/3/0/9", "vb": 1}]',
        b'[{"n": "/3/0/9", "vd": "***"}]',
        b'[{"n": "/3/0/9", "vlo": "3"}]',
        b'[{"n": "/3/0/9", "v": 1, "bad_": 1}]',  # unknown mandatory field
        b'[{"n": "3/0/9", "v": 1}]',  # not an absolute path
        b'[{"n": "/3/0", "v": 1}]',  # a value on an instance
        b'[{"n": "/4/0/1", "v": 1}]',  # outside the requested /3
        b'[{"bn": 5, "n": "/3/0/9", "v": 1}]',
        b'[{"n": "/3/0/0", "vs": "\\ud800"}]',  # lone surrogate
        b"[" * 5000 + b"]" * 5000,  # deep nesting
        b"\xff",
    ],
)
def test_senml_json_malformed(payload: bytes) -> None:
    with pytest.raises(InvalidArgument) as info:
        decode(payload, CF_SENML_JSON, "/3", now=NOW)
    assert info.value.coap_code == "4.00"


def test_senml_cbor() -> None:
    payload = cbor2.dumps([
        {-2: "/3303/0/", 0: "5700", 2: 21.5, 6: 1700000000},
        {0: "5701", 3: "Cel"},
        {0: "5760", 8: b"\x01\x02"},
        {0: "5761", 4: False},
        {0: "5762", "vlo": "1:0"},
    ])  # fmt: skip
    recs = decode(payload, CF_SENML_CBOR, "/3303/0", now=NOW)
    assert [(str(r.path), r.type, r.value, r.time) for r in recs] == [
        ("/3303/0/5700", V.FLOAT, 21.5, 1700000000),
        ("/3303/0/5701", V.STRING, "Cel", None),
        ("/3303/0/5760", V.OPAQUE, b"\x01\x02", None),
        ("/3303/0/5761", V.BOOLEAN, False, None),
        ("/3303/0/5762", V.OBJLNK, "1:0", None),
    ]
    for bad in [cbor2.dumps({0: 1}), cbor2.dumps([{0: "/3/0/9", 8: "text"}]),
                cbor2.dumps([{99: 1}]), cbor2.dumps([{0: 5, 2: 1}]), b"\x9f"]:  # fmt: skip
        with pytest.raises(InvalidArgument):
            decode(bad, CF_SENML_CBOR, "/", now=NOW)


def test_lwm2m_json_10() -> None:
    payload = json.dumps({
        "bn": "/3/0/",
        "e": [
            {"n": "0", "sv": "Open Mobile Alliance"},
            {"n": "9", "v": 95},
            {"n": "6/0", "v": 1},
            {"n": "13", "v": 1367491215, "t": -5},
            {"n": "30", "bv": True},
            {"n": "31", "ov": "3:0"},
        ],
    }).encode()  # fmt: skip
    recs = decode(payload, CF_LWM2M_JSON, "/3/0", now=NOW)
    assert [(str(r.path), r.type, r.value, r.time) for r in recs] == [
        ("/3/0/0", V.STRING, "Open Mobile Alliance", None),
        ("/3/0/9", V.INTEGER, 95, None),
        ("/3/0/6/0", V.INTEGER, 1, None),
        ("/3/0/13", V.TIME, 1367491215, NOW - 5),
        ("/3/0/30", V.BOOLEAN, True, None),
        ("/3/0/31", V.OBJLNK, "3:0", None),
    ]
    # Without bn the request path is the base; a single resource has an empty n.
    single = decode(b'{"e":[{"n":"","v":21.5}]}', CF_LWM2M_JSON, "/3303/0/5700", now=NOW)
    assert single == [Record(P("/3303/0/5700"), V.FLOAT, 21.5)]
    for bad in [
        b"[]",
        b'{"e": 1}',
        b'{"e": [{"n": "0"}]}',
        b'{"e": [{"n": "0", "v": 1, "sv": "x"}]}',
        b'{"bn": "/4/0/", "e": [{"n": "0", "v": 1}]}',
        b'{"e": [{"n": "0", "ov": "x"}]}',
    ]:
        with pytest.raises(InvalidArgument):
            decode(bad, CF_LWM2M_JSON, "/3/0", now=NOW)


def test_text_plain_typed_by_model() -> None:
    assert decode(b"21.5", CF_TEXT, "/3303/0/5700", now=NOW) == [
        Record(P("/3303/0/5700"), V.FLOAT, 21.5)
    ]
    assert decode(b"95", None, "/3/0/9", now=NOW) == [Record(P("/3/0/9"), V.INTEGER, 95)]
    assert decode(b"1367491215", CF_TEXT, "/3/0/13", now=NOW)[0].type is V.TIME
    assert decode(b"1", CF_TEXT, "/1/0/6", now=NOW)[0].value is True
    assert decode("héllo".encode(), CF_TEXT, "/9/0/1", now=NOW) == [
        Record(P("/9/0/1"), V.STRING, "héllo")
    ]
    for bad, path in [(b"abc", "/3303/0/5700"), (b"nan", "/3303/0/5700"), (b"1.5", "/3/0/9"),
                      (b" 1", "/3/0/9"), (b"2", "/1/0/6"), (b"\xff", "/9/0/1"), (b"x", "/3/0"),
                      (b"1_0", "/3/0/9"), (b"1" * 30, "/3/0/9")]:  # fmt: skip
        with pytest.raises(InvalidArgument):
            decode(bad, CF_TEXT, path, now=NOW)


def test_opaque_and_cbor_single() -> None:
    [rec] = decode(b"\x00\x01", CF_OPAQUE, "/5/0/0", now=NOW)
    assert rec.to_json() == {"path": "/5/0/0", "type": "opaque", "value": "AAE=", "time": None}
    assert decode(cbor2.dumps(21.5), CF_CBOR, "/3303/0/5700", now=NOW)[0].value == 21.5
    assert decode(cbor2.dumps(21), CF_CBOR, "/3303/0/5700", now=NOW)[0].value == 21.0
    assert decode(cbor2.dumps("x"), CF_CBOR, "/3/0/0", now=NOW)[0].value == "x"
    assert decode(cbor2.dumps(True), CF_CBOR, "/1/0/6", now=NOW)[0].value is True
    assert decode(cbor2.dumps(b"\x01"), CF_CBOR, "/9/0/0", now=NOW)[0].type is V.OPAQUE
    for bad in [cbor2.dumps([1]), cbor2.dumps(math.nan), cbor2.dumps(None), b""]:
        with pytest.raises(InvalidArgument):
            decode(bad, CF_CBOR, "/3/0/9", now=NOW)
    with pytest.raises(InvalidArgument):
        decode(b"x", CF_OPAQUE, "/5/0", now=NOW)
    with pytest.raises(InvalidArgument, match="unsupported content format"):
        decode(b"x", 50, "/5/0/0", now=NOW)


def test_record_from_operator_json() -> None:
    assert Record.from_json({"path": "/1/0/1", "value": 60}) == Record(P("/1/0/1"), V.INTEGER, 60)
    assert Record.from_json({"path": "/3303/0/5700", "value": 21}).value == 21.0
    assert Record.from_json({"path": "/9/0/0", "type": "opaque", "value": "AAE="}).value == b"\0\1"
    for bad in [
        {"path": "/9/0/0", "value": 1},  # type unknown to the model
        {"path": "/1/0/1", "value": "60"},
        {"path": "/1/0/1", "value": True},
        {"path": "/1/0", "value": 1, "type": "integer"},
        {"path": "/1/0/1", "value": 1, "type": "nope"},
        {"path": "/1/0/1", "value": 1, "extra": 1},
        {"path": "/1/0/1", "value": 1, "time": "x"},
        {"path": "/9/0/0", "type": "opaque", "value": "!!"},
        {"path": "/3303/0/5700", "value": math.inf},
        {"path": "/1/0/1", "value": 2**63},
        {"path": "/9/0/0", "type": "objlnk", "value": "1:99999"},
        [],
    ]:
        with pytest.raises(InvalidArgument):
            Record.from_json(bad)


def test_encode_refusals() -> None:
    r = Record(P("/3/0/14"), V.STRING, "+02:00")
    with pytest.raises(InvalidArgument):
        encode([], CF_TLV, "/3/0")
    with pytest.raises(InvalidArgument):
        encode([r], CF_TLV, "/1/0")  # outside the path
    with pytest.raises(InvalidArgument):
        encode([r, r], CF_SENML_JSON, "/3/0")  # twice
    with pytest.raises(InvalidArgument):
        encode([r], CF_TEXT, "/3/0")  # text carries the path itself
    with pytest.raises(InvalidArgument):
        encode([r], CF_OPAQUE, "/3/0/14")  # not opaque
    with pytest.raises(InvalidArgument):
        encode([r], CF_TLV, "/")
    with pytest.raises(InvalidArgument):
        encode([r], CF_LWM2M_JSON, "/3/0")  # decode-only
    assert encode([r], CF_TEXT, "/3/0/14") == b"+02:00"
    assert encode([r], CF_TLV, "/3/0/14") == bytes.fromhex("C60E2B30323A3030")


# -- property tests -----------------------------------------------------------------------

_TYPES = [V.STRING, V.INTEGER, V.UNSIGNED, V.FLOAT, V.BOOLEAN, V.OPAQUE, V.TIME, V.OBJLNK]


def _value(vtype: ValueType) -> st.SearchStrategy[object]:
    return {
        V.STRING: st.text(max_size=20),
        V.INTEGER: st.integers(-(2**63), 2**63 - 1),
        V.TIME: st.integers(-(2**63), 2**63 - 1),
        V.UNSIGNED: st.integers(0, 2**64 - 1),
        V.FLOAT: st.floats(allow_nan=False, allow_infinity=False),
        V.BOOLEAN: st.booleans(),
        V.OPAQUE: st.binary(max_size=300),
        V.OBJLNK: st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(
            lambda t: f"{t[0]}:{t[1]}"
        ),
    }[vtype].filter(lambda v: not isinstance(v, str) or v < "\ud800" or True)


@st.composite
def _resources(draw: st.DrawFn, with_time: bool) -> tuple[ObjectModel, list[Record]]:
    """Records of one object's instances, and the model that types them."""
    oid = draw(st.integers(0, 65534))
    rids = draw(st.lists(st.integers(0, 65534), min_size=1, max_size=5, unique=True))
    types = {rid: draw(st.sampled_from(_TYPES)) for rid in rids}
    multiple = {rid: draw(st.booleans()) for rid in rids}
    model = ObjectModel([ObjectDef(oid, "x", "1.0", True, {
        rid: ResourceDef(rid, "r", types[rid], "RW", multiple=multiple[rid]) for rid in rids
    })])  # fmt: skip
    records = []
    for iid in draw(st.lists(st.integers(0, 65534), min_size=1, max_size=3, unique=True)):
        for rid in rids:
            subs = (
                draw(st.lists(st.integers(0, 65534), min_size=1, max_size=3, unique=True))
                if multiple[rid]
                else [None]
            )
            for sub in subs:
                ids = (oid, iid, rid) if sub is None else (oid, iid, rid, sub)
                value = draw(_value(types[rid]).filter(_valid_text))
                time = draw(st.none() | st.floats(2**28, 2**34)) if with_time else None
                records.append(Record(Lwm2mPath(ids), types[rid], value, time))
    return model, records


def _valid_text(v: object) -> bool:
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


@given(_resources(with_time=False), st.integers(1, 2))
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
def test_tlv_round_trip(data: tuple[ObjectModel, list[Record]], level: int) -> None:
    model, records = data
    base = Lwm2mPath(records[0].path.ids[:level])
    records = [r for r in records if base.is_prefix_of(r.path)]
    assert decode(encode(records, CF_TLV, base), CF_TLV, base, now=NOW, model=model) == records


@given(
    _resources(with_time=True), st.sampled_from([CF_SENML_JSON, CF_SENML_CBOR]), st.integers(0, 2)
)
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
def test_senml_round_trip(data: tuple[ObjectModel, list[Record]], cf: int, level: int) -> None:
    model, records = data
    base = Lwm2mPath(records[0].path.ids[:level])
    records = [r for r in records if base.is_prefix_of(r.path)]
    assert decode(encode(records, cf, base), cf, base, now=NOW, model=model) == records
    # ... and the JSON shape is JSON.
    json.dumps(records_to_json(records), allow_nan=False)


@given(_resources(with_time=False), st.sampled_from([CF_TEXT, CF_CBOR, CF_TLV]))
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
def test_single_value_round_trip(data: tuple[ObjectModel, list[Record]], cf: int) -> None:
    model, records = data
    r = records[0]
    assert decode(encode([r], cf, r.path), cf, r.path, now=NOW, model=model) == [r]


_PATHS = st.sampled_from(
    ["/", "/3", "/3/0", "/3/0/0", "/3/0/7", "/3/0/7/1", "/3303/0/5700", "/9/0/1"]
)
_CFS = st.sampled_from([CF_TEXT, CF_OPAQUE, CF_CBOR, CF_SENML_JSON, CF_SENML_CBOR, CF_TLV,
                        CF_LWM2M_JSON, 1542, 1543, 50, None])  # fmt: skip


def _check_only_invalid_argument(payload: bytes, cf: int | None, path: str) -> None:
    try:
        recs = decode(payload, cf, path, now=NOW)
    except InvalidArgument:
        return
    json.dumps(records_to_json(recs), allow_nan=False)  # whatever decodes is valid JSON


@given(st.binary(max_size=300), _CFS, _PATHS)
@settings(max_examples=1500, deadline=None, derandomize=True, database=None)
def test_garbage_bytes_never_raise_anything_but_invalid_argument(
    payload: bytes, cf: int | None, path: str
) -> None:
    _check_only_invalid_argument(payload, cf, path)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
    | st.sampled_from(["/3/0/", "/3/0/9", "0", "9", "7/0", "3:0", "v", "n", "bn", "e", "sv"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["bn", "bt", "bv", "n", "v", "vs", "vb", "vd", "vlo", "t", "e", "sv", "ov", "x_"]
        ),
        inner, max_size=5,
    ),
    max_leaves=20,
)  # fmt: skip


@given(_json_values, _PATHS)
@settings(max_examples=800, deadline=None, derandomize=True, database=None)
def test_structured_garbage_never_raises_anything_but_invalid_argument(
    value: object, path: str
) -> None:
    text = json.dumps(value).encode()
    for cf in (CF_SENML_JSON, CF_LWM2M_JSON):
        _check_only_invalid_argument(text, cf, path)
    _check_only_invalid_argument(cbor2.dumps(value), CF_SENML_CBOR, path)
    _check_only_invalid_argument(cbor2.dumps(value), CF_CBOR, path)


# -- issue 21.2: LwM2M 1.0 JSON (11543) names are the plain concatenation of bn and n ------------

# LwM2M 1.0 TS, 6.4.4 (JSON) example: the Device object instance of the TLV example above.
DEVICE_JSON = {
    "bn": "/3/0/",
    "e": [
        {"n": "0", "sv": "Open Mobile Alliance"},
        {"n": "1", "sv": "Lightweight M2M Client"},
        {"n": "2", "sv": "345000123"},
        {"n": "3", "sv": "1.0"},
        {"n": "6/0", "v": 1},
        {"n": "6/1", "v": 5},
        {"n": "7/0", "v": 3800},
        {"n": "7/1", "v": 5000},
        {"n": "8/0", "v": 125},
        {"n": "8/1", "v": 900},
        {"n": "9", "v": 100},
        {"n": "10", "v": 15},
        {"n": "11/0", "v": 0},
        {"n": "13", "v": 1367491215},
        {"n": "14", "sv": "+02:00"},
        {"n": "16", "sv": "U"},
    ],
}


def test_lwm2m_json_spec_example_decodes_as_the_tlv_example() -> None:
    """The same object instance in JSON and in TLV gives the same records (types from the
    object model in both)."""
    recs = decode(json.dumps(DEVICE_JSON).encode(), CF_LWM2M_JSON, "/3/0", now=NOW)
    assert recs == decode(DEVICE_TLV, CF_TLV, "/3/0", now=NOW)


@pytest.mark.parametrize(
    ("payload", "base", "expected"),
    [
        # The vector: bn without a trailing "/" and n with a leading one.
        ({"bn": "/3/0", "e": [{"n": "/0", "sv": "x"}]}, "/3/0", [("/3/0/0", V.STRING, "x")]),
        # Wakaama's encoder and tests: bn "/2/3" + n "/0"; bn "/5/0" + n "/1".
        ({"bn": "/2/3", "e": [{"n": "/0", "v": 1234}]}, "/2", [("/2/3/0", V.INTEGER, 1234)]),
        ({"bn": "/5/0", "e": [{"n": "/1", "sv": "http"}]}, "/5/0", [("/5/0/1", V.STRING, "http")]),
        # A single resource: bn is its path and n is empty.
        (
            {"bn": "/5/0/1", "e": [{"n": "", "sv": "http"}]},
            "/5/0/1",
            [("/5/0/1", V.STRING, "http")],
        ),
        # Object links at the root (LwM2M 1.0 TS 6.4.4, object link example).
        (
            {
                "bn": "/",
                "e": [{"n": "65/0/0/0", "ov": "66:0"}, {"n": "66/0/0", "sv": "myService1"}],
            },
            "/",
            [("/65/0/0/0", V.OBJLNK, "66:0"), ("/66/0/0", V.STRING, "myService1")],
        ),
    ],
)
def test_lwm2m_json_name_vectors(
    payload: dict[str, object], base: str, expected: list[tuple[str, ValueType, object]]
) -> None:
    recs = decode(json.dumps(payload).encode(), CF_LWM2M_JSON, base, now=NOW)
    assert [(str(r.path), r.type, r.value) for r in recs] == expected


def test_lwm2m_json_spec_time_series() -> None:
    """LwM2M 1.0 TS 6.4.4: several timestamped values of one resource, t relative to bt."""
    payload = {
        "bn": "/72/",
        "bt": 25462634,
        "e": [
            {"n": "1/2", "v": 22.4, "t": -5},
            {"n": "1/2", "v": 22.9, "t": -30},
            {"n": "1/2", "v": 24.1, "t": -50},
        ],
    }
    recs = decode(json.dumps(payload).encode(), CF_LWM2M_JSON, "/72", now=NOW)
    assert [(str(r.path), r.value) for r in recs] == [
        ("/72/1/2", 22.4),
        ("/72/1/2", 22.9),
        ("/72/1/2", 24.1),
    ]
    t = [r.time for r in recs]
    assert t[0] is not None and t[1] is not None and t[2] is not None
    assert (t[0] - t[1], t[1] - t[2]) == (25, 20)


# -- issue 11.12: one type per resource from the object model, whatever the format ---------------


@pytest.mark.parametrize(
    ("payload", "cf"),
    [
        (b"1", CF_TEXT),
        (bytes([0xC1, 0x03, 0x01]), CF_TLV),
        (b'[{"bn":"/5/0/","n":"3","v":1}]', CF_SENML_JSON),
        (b'[{"n":"/5/0/3","vs":"1"}]', CF_SENML_JSON),
        (cbor2.dumps([{0: "/5/0/3", 2: 1.0}]), CF_SENML_CBOR),
        (b'{"bn":"/5/0/","e":[{"n":"3","v":1}]}', CF_LWM2M_JSON),
        (cbor2.dumps(1), CF_CBOR),
    ],
)
def test_firmware_state_is_an_integer_in_every_format(payload: bytes, cf: int) -> None:
    """/5/0/3 (Firmware Update State) was "1" in text, base64 in TLV, a number in SenML."""
    base = "/5/0" if cf in (CF_TLV,) else "/5/0/3"
    recs = decode(payload, cf, base, now=NOW)
    assert [(str(r.path), r.type, r.value) for r in recs] == [("/5/0/3", V.INTEGER, 1)]


def test_values_that_the_model_type_cannot_hold_are_malformed() -> None:
    for payload, cf in (
        (b'[{"n":"/5/0/3","vs":"one"}]', CF_SENML_JSON),
        (b'[{"n":"/6/0/0","vb":true}]', CF_SENML_JSON),  # Latitude is a float
        (b'[{"n":"/5/0/3","vd":"AQ"}]', CF_SENML_JSON),  # opaque bytes for an integer
    ):
        with pytest.raises(InvalidArgument):
            decode(payload, cf, "/", now=NOW)
    # Opaque bytes for a string resource are its UTF-8 text; a number for one its text form.
    recs = decode(b'[{"n":"/3/0/0","vd":"QUNNRQ"},{"n":"/3/0/2","v":42}]', CF_SENML_JSON, "/3",
                  now=NOW)  # fmt: skip
    assert [(r.type, r.value) for r in recs] == [(V.STRING, "ACME"), (V.STRING, "42")]
