"""LwM2M content formats -> one JSON shape, and back (for Write).

Every decoder returns a list of ``Record``; ``Record.to_json()`` is the documented
shape (docs/lwm2m.md)::

    {"path": "/3303/0/5700", "type": "float", "value": 21.5, "time": 1700000000.0}

``type`` is one of ``ValueType``; ``value`` is a JSON number, string or boolean
(opaque as standard base64, objlnk as "3:0"); ``time`` is absolute Unix seconds or
null when the device gave none. Formats that carry no type (TLV, text, CBOR) are
typed with the ``ObjectModel`` (objects 1, 3, 3303 built in); a TLV value of an
unknown resource decodes as opaque, a text value as string.

Malformed input raises ``InvalidArgument`` (CoAP 4.00), never anything else.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from corem_ingress.adapters.lwm2m.model import (
    DEFAULT_MODEL,
    Lwm2mPath,
    ObjectModel,
    ValueType,
)
from corem_ingress.core.errors import IngressError, InvalidArgument
from corem_ingress.core.uplink import JsonValue

CF_TEXT = 0
CF_LINK_FORMAT = 40
CF_OPAQUE = 42
CF_CBOR = 60
CF_SENML_JSON = 110
CF_SENML_CBOR = 112
CF_TLV = 11542
CF_LWM2M_JSON = 11543
#: Pre-registration numbers some LwM2M 1.0 clients still send.
CF_TLV_OLD = 1542
CF_LWM2M_JSON_OLD = 1543

DECODABLE = frozenset(
    {
        CF_TEXT,
        CF_OPAQUE,
        CF_CBOR,
        CF_SENML_JSON,
        CF_SENML_CBOR,
        CF_TLV,
        CF_LWM2M_JSON,
        CF_TLV_OLD,
        CF_LWM2M_JSON_OLD,
    }
)
ENCODABLE = frozenset({CF_TEXT, CF_OPAQUE, CF_CBOR, CF_SENML_JSON, CF_SENML_CBOR, CF_TLV})

MAX_RECORDS = 4096
#: SenML: times below 2**28 are relative to "now" (RFC 8428 4.5.3).
RELATIVE_TIME_LIMIT = 2**28
_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)

Scalar = int | float | bool | str | bytes


def _bad(what: str) -> InvalidArgument:
    return InvalidArgument(f"malformed payload: {what}")


def _objlnk(value: str) -> str:
    m = re.fullmatch(r"(0|[1-9][0-9]{0,4}):(0|[1-9][0-9]{0,4})", value)
    if m is None or int(m[1]) > 65535 or int(m[2]) > 65535:
        raise _bad("an object link looks like 3:0 (two ids 0-65535)")
    return value


def check_value(vtype: ValueType, value: object) -> Scalar:
    """``value`` normalised for ``vtype`` (int -> float for FLOAT), or InvalidArgument."""
    if vtype is ValueType.FLOAT:
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, float) or not math.isfinite(value):
            raise _bad("a float value must be a finite number")
        return value
    if vtype in (ValueType.INTEGER, ValueType.TIME, ValueType.UNSIGNED):
        lo, hi = _UINT64 if vtype is ValueType.UNSIGNED else _INT64
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise _bad(f"an {vtype.value} value must be an integer in range")
        return value
    if vtype is ValueType.BOOLEAN:
        if not isinstance(value, bool):
            raise _bad("a boolean value must be true or false")
        return value
    if vtype is ValueType.STRING:
        if not isinstance(value, str):
            raise _bad("a string value must be text")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad("a string value must be valid Unicode") from None
        return value
    if vtype is ValueType.OPAQUE:
        if not isinstance(value, bytes):
            raise _bad("an opaque value must be bytes")
        return value
    if vtype is ValueType.OBJLNK:
        if not isinstance(value, str):
            raise _bad("an object link must be text like 3:0")
        return _objlnk(value)
    raise _bad("a value of type none cannot be carried")


@dataclass(frozen=True, slots=True)
class Record:
    """One resource (or resource instance) value."""

    path: Lwm2mPath
    type: ValueType
    value: Scalar
    time: float | None = None

    def __post_init__(self) -> None:
        if self.path.level < 3:
            raise _bad("a value belongs to a resource or resource instance path")
        object.__setattr__(self, "value", check_value(self.type, self.value))
        if self.time is not None and (isinstance(self.time, bool) or not math.isfinite(self.time)):
            raise _bad("time must be a finite number")

    def to_json(self) -> dict[str, JsonValue]:
        value: JsonValue
        if isinstance(self.value, bytes):
            value = base64.b64encode(self.value).decode()
        else:
            value = self.value
        return {"path": str(self.path), "type": self.type.value, "value": value, "time": self.time}

    @classmethod
    def from_json(cls, data: object, *, model: ObjectModel = DEFAULT_MODEL) -> Record:
        """Operator input (admin API, CLI); ``type`` may be left out if the model knows it."""
        if not isinstance(data, dict):
            raise InvalidArgument("a record is an object with path, value and type")
        unknown = set(data) - {"path", "type", "value", "time"}
        if unknown:
            raise InvalidArgument("a record has only path, type, value and time")
        path = Lwm2mPath.parse(data.get("path"))  # type: ignore[arg-type]
        vtype = _model_type(path, model)
        if "type" in data:
            try:
                vtype = ValueType(data["type"])
            except ValueError:
                raise InvalidArgument("unknown value type") from None
        if vtype is None:
            raise InvalidArgument(f"type is needed for {path}: the model does not know it")
        value = data.get("value")
        if vtype is ValueType.OPAQUE:
            if not isinstance(value, str):
                raise InvalidArgument("an opaque value is given as base64 text")
            value = _b64(value, urlsafe=False)
        time = data.get("time")
        if time is not None and (isinstance(time, bool) or not isinstance(time, int | float)):
            raise InvalidArgument("time must be a number")
        return cls(path, vtype, value, None if time is None else float(time))  # type: ignore[arg-type]


def records_to_json(records: Iterable[Record]) -> list[JsonValue]:
    return [r.to_json() for r in records]


def _model_type(path: Lwm2mPath, model: ObjectModel) -> ValueType | None:
    if path.level < 3:
        return None
    assert path.object_id is not None and path.resource_id is not None
    return model.resource_type(path.object_id, path.resource_id)


def _b64(text: str, *, urlsafe: bool) -> bytes:
    if urlsafe:
        if not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
            raise _bad("bad base64url data")
        text = text.rstrip("=")
        text += "=" * (-len(text) % 4)
        try:
            return base64.urlsafe_b64decode(text)
        except (binascii.Error, ValueError):
            raise _bad("bad base64url data") from None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("bad base64 data") from None


def _refine(path: Lwm2mPath, wire: ValueType, value: Scalar, model: ObjectModel) -> Record:
    """Type a value decoded from a self-describing format with the model where they agree."""
    want = _model_type(path, model)
    if want is not None and want is not wire:
        if want is ValueType.FLOAT and wire is ValueType.INTEGER:
            return Record(path, want, float(value))
        if (
            want in (ValueType.INTEGER, ValueType.TIME, ValueType.UNSIGNED)
            and wire in (ValueType.INTEGER, ValueType.FLOAT)
            and float(value).is_integer()
        ):
            lo, hi = _UINT64 if want is ValueType.UNSIGNED else _INT64
            if lo <= int(value) <= hi:
                return Record(path, want, int(value))
    return Record(path, wire, value)


def _absolute(t: float | None, now: float) -> float | None:
    if t is None:
        return None
    if not math.isfinite(t):
        raise _bad("time must be finite")
    return t if abs(t) >= RELATIVE_TIME_LIMIT else now + t


def _under(path: Lwm2mPath, base: Lwm2mPath) -> Lwm2mPath:
    if not base.is_prefix_of(path):
        raise _bad("a record lies outside the requested path")
    return path


def _parse_path(text: object) -> Lwm2mPath:
    if not isinstance(text, str):
        raise _bad("a record name must be a path")
    try:
        return Lwm2mPath.parse(text)
    except InvalidArgument:
        raise _bad("a record name is not an LwM2M path") from None


# -- SenML (JSON 110 and CBOR 112) ---------------------------------------------------------

_SENML_CBOR_LABELS = {
    -1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
    0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd",
}  # fmt: skip
_SENML_LABELS_BY_NAME = {v: k for k, v in _SENML_CBOR_LABELS.items()}
_SENML_KNOWN = frozenset(_SENML_CBOR_LABELS.values()) | {"vlo"}
_VALUE_KEYS = ("v", "vs", "vb", "vd", "vlo")


def _number(x: object, what: str) -> float | int:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise _bad(f"{what} must be a number")
    if isinstance(x, float) and not math.isfinite(x):
        raise _bad(f"{what} must be finite")
    return x


def _senml(
    items: object, base: Lwm2mPath, now: float, model: ObjectModel, *, cbor: bool
) -> list[Record]:
    if not isinstance(items, list):
        raise _bad("SenML is an array of records")
    if len(items) > MAX_RECORDS:
        raise _bad("too many records")
    bn, bt, has_bt = "", 0.0, False
    bv: float | int = 0
    out: list[Record] = []
    for raw in items:
        if not isinstance(raw, dict):
            raise _bad("a SenML record is a map")
        rec: dict[str, Any] = {}
        for key, val in raw.items():
            name = _SENML_CBOR_LABELS.get(key) if cbor and isinstance(key, int) else key
            if not isinstance(name, str):
                raise _bad("unknown SenML label")
            if name not in _SENML_KNOWN:
                if name.endswith("_"):
                    raise _bad("unsupported mandatory SenML field")
                continue
            rec[name] = val
        if "bn" in rec:
            if not isinstance(rec["bn"], str):
                raise _bad("bn must be text")
            bn = rec["bn"]
        if "bt" in rec:
            bt = _number(rec["bt"], "bt")
            has_bt = True
        if "bv" in rec:
            bv = _number(rec["bv"], "bv")
        n = rec.get("n", "")
        if not isinstance(n, str):
            raise _bad("n must be text")
        present = [k for k in _VALUE_KEYS if k in rec]
        if not present:
            if ("bn" in rec or "bt" in rec or "bv" in rec) and not n:
                continue  # a base-only record
            raise _bad("a SenML record carries no value")
        if len(present) > 1:
            raise _bad("a SenML record carries more than one value")
        path = _under(_parse_path(bn + n), base)
        key, val = present[0], rec[present[0]]
        t = rec.get("t")
        time = _absolute(None if t is None and not has_bt else bt + _number(t or 0, "t"), now)
        if key == "v":
            num = _number(val, "v") + bv
            wire = ValueType.INTEGER if isinstance(num, int) else ValueType.FLOAT
            r = _refine(path, wire, num, model)
        elif key == "vs":
            if not isinstance(val, str):
                raise _bad("vs must be text")
            r = Record(path, ValueType.STRING, val)
        elif key == "vb":
            if not isinstance(val, bool):
                raise _bad("vb must be a boolean")
            r = Record(path, ValueType.BOOLEAN, val)
        elif key == "vd":
            if cbor:
                if not isinstance(val, bytes):
                    raise _bad("vd must be a byte string")
                data = val
            else:
                if not isinstance(val, str):
                    raise _bad("vd must be base64url text")
                data = _b64(val, urlsafe=True)
            r = Record(path, ValueType.OPAQUE, data)
        else:
            if not isinstance(val, str):
                raise _bad("vlo must be text like 3:0")
            r = Record(path, ValueType.OBJLNK, _objlnk(val))
        out.append(Record(r.path, r.type, r.value, time))
    return out


def _reject_constant(name: str) -> object:
    raise _bad("non-finite numbers are not allowed")


def _json(payload: bytes) -> object:
    try:
        return json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad("not valid JSON") from None


def _cbor(payload: bytes) -> object:
    try:
        return cbor2.loads(payload)
    except IngressError:
        raise
    except Exception:  # cbor2 raises CBORDecodeError and, on odd input, other errors
        raise _bad("not valid CBOR") from None


# -- LwM2M JSON (11543, LwM2M 1.0) -------------------------------------------------------


def _lwm2m_json(obj: object, base: Lwm2mPath, now: float, model: ObjectModel) -> list[Record]:
    if not isinstance(obj, dict) or not isinstance(obj.get("e"), list):
        raise _bad('LwM2M JSON is an object with an "e" array')
    bn = obj.get("bn", str(base))
    if not isinstance(bn, str):
        raise _bad("bn must be text")
    bt = _number(obj.get("bt", 0), "bt")
    has_bt = "bt" in obj
    entries = obj["e"]
    if len(entries) > MAX_RECORDS:
        raise _bad("too many records")
    out: list[Record] = []
    for e in entries:
        if not isinstance(e, dict):
            raise _bad("an entry is an object")
        n = e.get("n", "")
        if not isinstance(n, str):
            raise _bad("n must be text")
        name = bn + n if (not n or bn.endswith("/")) else bn + "/" + n
        path = _under(_parse_path(name), base)
        present = [k for k in ("v", "sv", "bv", "ov") if k in e]
        if len(present) != 1:
            raise _bad("an entry carries exactly one of v, sv, bv, ov")
        key, val = present[0], e[present[0]]
        if key == "v":
            num = _number(val, "v")
            wire = ValueType.INTEGER if isinstance(num, int) else ValueType.FLOAT
            r = _refine(path, wire, num, model)
        elif key == "sv":
            if not isinstance(val, str):
                raise _bad("sv must be text")
            want = _model_type(path, model)
            if want is ValueType.OPAQUE:
                r = Record(path, want, _b64(val, urlsafe=False))
            else:
                r = Record(path, ValueType.STRING, val)
        elif key == "bv":
            if not isinstance(val, bool):
                raise _bad("bv must be a boolean")
            r = Record(path, ValueType.BOOLEAN, val)
        else:
            if not isinstance(val, str):
                raise _bad("ov must be text like 3:0")
            r = Record(path, ValueType.OBJLNK, _objlnk(val))
        t = e.get("t")
        time = _absolute(None if t is None and not has_bt else bt + _number(t or 0, "t"), now)
        out.append(Record(r.path, r.type, r.value, time))
    return out


# -- TLV (11542) ---------------------------------------------------------------------------

_OBJECT_INSTANCE, _RESOURCE_INSTANCE, _MULTIPLE_RESOURCE, _RESOURCE = 0, 1, 2, 3


def _tlv_entries(buf: bytes) -> list[tuple[int, int, bytes]]:
    out: list[tuple[int, int, bytes]] = []
    i, n = 0, len(buf)
    while i < n:
        t = buf[i]
        i += 1
        kind = t >> 6
        id_len = 2 if t & 0x20 else 1
        len_type = (t >> 3) & 0x3
        if i + id_len > n:
            raise _bad("TLV truncated in an identifier")
        ident = int.from_bytes(buf[i : i + id_len], "big")
        i += id_len
        if len_type == 0:
            length = t & 0x7
        else:
            if i + len_type > n:
                raise _bad("TLV truncated in a length")
            length = int.from_bytes(buf[i : i + len_type], "big")
            i += len_type
        if i + length > n:
            raise _bad("TLV value longer than the payload")
        if ident > 65534:
            raise _bad("TLV identifier out of range")
        out.append((kind, ident, buf[i : i + length]))
        i += length
        if len(out) > MAX_RECORDS:
            raise _bad("too many TLV entries")
    return out


def _tlv_value(path: Lwm2mPath, data: bytes, model: ObjectModel) -> Record:
    vtype = _model_type(path, model)
    if vtype in (ValueType.INTEGER, ValueType.TIME, ValueType.UNSIGNED):
        if len(data) not in (1, 2, 4, 8):
            raise _bad("a TLV integer is 1, 2, 4 or 8 bytes")
        signed = vtype is not ValueType.UNSIGNED
        return Record(path, vtype, int.from_bytes(data, "big", signed=signed))
    if vtype is ValueType.FLOAT:
        if len(data) == 4:
            value = float(struct.unpack(">f", data)[0])
        elif len(data) == 8:
            value = float(struct.unpack(">d", data)[0])
        else:
            raise _bad("a TLV float is 4 or 8 bytes")
        return Record(path, vtype, value)
    if vtype is ValueType.BOOLEAN:
        if data not in (b"\x00", b"\x01"):
            raise _bad("a TLV boolean is one byte, 0 or 1")
        return Record(path, vtype, data == b"\x01")
    if vtype is ValueType.STRING:
        try:
            return Record(path, vtype, data.decode("utf-8"))
        except UnicodeDecodeError:
            raise _bad("a TLV string is not UTF-8") from None
    if vtype is ValueType.OBJLNK:
        if len(data) != 4:
            raise _bad("a TLV object link is 4 bytes")
        return Record(
            path, vtype, f"{int.from_bytes(data[:2], 'big')}:{int.from_bytes(data[2:], 'big')}"
        )
    return Record(path, ValueType.OPAQUE, data)


def _tlv_resource(path: Lwm2mPath, kind: int, value: bytes, model: ObjectModel) -> list[Record]:
    """A resource TLV (single value, or multiple resource with its instances)."""
    if kind == _RESOURCE:
        return [_tlv_value(path, value, model)]
    if kind == _MULTIPLE_RESOURCE:
        out = []
        for k, ident, v in _tlv_entries(value):
            if k != _RESOURCE_INSTANCE:
                raise _bad("a multiple resource TLV holds resource instances")
            out.append(_tlv_value(path.child(ident), v, model))
        return out
    raise _bad("expected a resource TLV")


def _tlv(payload: bytes, base: Lwm2mPath, model: ObjectModel) -> list[Record]:
    entries = _tlv_entries(payload)
    out: list[Record] = []
    level = base.level
    if level == 0:
        raise _bad("TLV cannot carry the root path")
    if level == 2 and len(entries) == 1 and entries[0][:2] == (_OBJECT_INSTANCE, base.ids[1]):
        entries = _tlv_entries(entries[0][2])  # instance wrapped in its own TLV: accepted
    for kind, ident, value in entries:
        if level == 1:
            if kind != _OBJECT_INSTANCE:
                raise _bad("an object TLV holds object instances")
            inst = base.child(ident)
            for k, rid, v in _tlv_entries(value):
                out.extend(_tlv_resource(inst.child(rid), k, v, model))
        elif level == 2:
            out.extend(_tlv_resource(base.child(ident), kind, value, model))
        elif level == 3:
            if kind == _RESOURCE_INSTANCE:
                out.append(_tlv_value(base.child(ident), value, model))
            elif ident == base.ids[2]:
                out.extend(_tlv_resource(base, kind, value, model))
            else:
                raise _bad("a TLV resource id differs from the requested path")
        else:
            if kind != _RESOURCE_INSTANCE or ident != base.ids[3]:
                raise _bad("expected the requested resource instance")
            out.append(_tlv_value(base, value, model))
        if len(out) > MAX_RECORDS:
            raise _bad("too many records")
    return out


def _tlv_header(kind: int, ident: int, length: int) -> bytes:
    t = kind << 6
    id_bytes = ident.to_bytes(2 if ident > 0xFF else 1, "big")
    if ident > 0xFF:
        t |= 0x20
    if length < 8:
        return bytes([t | length]) + id_bytes
    for n in (1, 2, 3):
        if length < 1 << (8 * n):
            return bytes([t | (n << 3)]) + id_bytes + length.to_bytes(n, "big")
    raise InvalidArgument("a TLV value is at most 16 MiB")


def _int_bytes(value: int, signed: bool) -> bytes:
    for n in (1, 2, 4, 8):
        try:
            return value.to_bytes(n, "big", signed=signed)
        except OverflowError:
            continue
    raise InvalidArgument("integer out of range")


def _tlv_encode_value(r: Record) -> bytes:
    v = r.value
    if r.type is ValueType.FLOAT:
        return struct.pack(">d", v)
    if r.type is ValueType.BOOLEAN:
        return b"\x01" if v else b"\x00"
    if isinstance(v, bool):
        raise InvalidArgument("boolean value for a non-boolean type")
    if isinstance(v, int):
        return _int_bytes(v, signed=r.type is not ValueType.UNSIGNED)
    if r.type is ValueType.OBJLNK:
        assert isinstance(v, str)
        a, b = v.split(":")
        return int(a).to_bytes(2, "big") + int(b).to_bytes(2, "big")
    if isinstance(v, str):
        return v.encode("utf-8")
    assert isinstance(v, bytes)
    return v


def _tlv_resources(records: Sequence[Record]) -> bytes:
    """Resource TLVs for records of one instance (grouped by resource id, in order)."""
    groups: dict[int, list[Record]] = {}
    for r in records:
        rid = r.path.ids[2]
        groups.setdefault(rid, []).append(r)
    out = bytearray()
    for rid, group in groups.items():
        if all(r.path.level == 3 for r in group):
            if len(group) != 1:
                raise InvalidArgument("the same resource is given twice")
            value = _tlv_encode_value(group[0])
            out += _tlv_header(_RESOURCE, rid, len(value)) + value
        elif all(r.path.level == 4 for r in group):
            inner = bytearray()
            for r in group:
                value = _tlv_encode_value(r)
                inner += _tlv_header(_RESOURCE_INSTANCE, r.path.ids[3], len(value)) + value
            out += _tlv_header(_MULTIPLE_RESOURCE, rid, len(inner)) + inner
        else:
            raise InvalidArgument("a resource is given both as single and multiple")
    return bytes(out)


def _check_records(records: Sequence[Record], base: Lwm2mPath) -> None:
    if not records:
        raise InvalidArgument("nothing to encode")
    if len(records) > MAX_RECORDS:
        raise InvalidArgument("too many records")
    seen: set[Lwm2mPath] = set()
    for r in records:
        if not base.is_prefix_of(r.path):
            raise InvalidArgument(f"{r.path} lies outside {base}")
        if r.path in seen:
            raise InvalidArgument(f"{r.path} is given twice")
        seen.add(r.path)


def _encode_tlv(records: Sequence[Record], base: Lwm2mPath) -> bytes:
    level = base.level
    if level == 0:
        raise InvalidArgument("TLV cannot carry the root path")
    if level == 1:
        by_inst: dict[int, list[Record]] = {}
        for r in records:
            by_inst.setdefault(r.path.ids[1], []).append(r)
        out = bytearray()
        for inst, group in by_inst.items():
            inner = _tlv_resources(group)
            out += _tlv_header(_OBJECT_INSTANCE, inst, len(inner)) + inner
        return bytes(out)
    if level == 2:
        return _tlv_resources(records)
    if level == 3 and records[0].path.level == 3:
        return _tlv_resources(records)
    if level == 3:
        return _tlv_resources(records)  # a multiple resource
    value = _tlv_encode_value(records[0])
    return _tlv_header(_RESOURCE_INSTANCE, base.ids[3], len(value)) + value


# -- single values: text (0), opaque (42), CBOR (60) --------------------------------------

_INT_RE = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def _single(base: Lwm2mPath) -> Lwm2mPath:
    if base.level < 3:
        raise _bad("this content format carries one resource value")
    return base


def _text(payload: bytes, base: Lwm2mPath, model: ObjectModel) -> list[Record]:
    path = _single(base)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("text is not UTF-8") from None
    vtype = _model_type(path, model) or ValueType.STRING
    if vtype in (ValueType.INTEGER, ValueType.TIME, ValueType.UNSIGNED):
        if not _INT_RE.fullmatch(text) or len(text) > 21:
            raise _bad("expected an integer")
        return [Record(path, vtype, int(text))]
    if vtype is ValueType.FLOAT:
        if not _FLOAT_RE.fullmatch(text) or len(text) > 64:
            raise _bad("expected a number")
        return [Record(path, vtype, float(text))]
    if vtype is ValueType.BOOLEAN:
        if text not in ("0", "1"):
            raise _bad("expected 0 or 1")
        return [Record(path, vtype, text == "1")]
    if vtype is ValueType.OPAQUE:
        return [Record(path, vtype, _b64(text, urlsafe=False))]
    if vtype is ValueType.OBJLNK:
        return [Record(path, vtype, _objlnk(text))]
    return [Record(path, ValueType.STRING, text)]


def _text_encode(r: Record) -> bytes:
    v = r.value
    if r.type is ValueType.BOOLEAN:
        return b"1" if v else b"0"
    if r.type is ValueType.FLOAT:
        return repr(v).encode()
    if isinstance(v, bytes):
        return base64.b64encode(v)
    return str(v).encode("utf-8")


def _cbor_single(payload: bytes, base: Lwm2mPath, model: ObjectModel) -> list[Record]:
    path = _single(base)
    value = _cbor(payload)
    if isinstance(value, bool):
        return [Record(path, ValueType.BOOLEAN, value)]
    if isinstance(value, int):
        wire = (
            ValueType.INTEGER if value >= _INT64[0] and value <= _INT64[1] else ValueType.UNSIGNED
        )
        return [_refine(path, wire, value, model)]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad("non-finite number")
        return [_refine(path, ValueType.FLOAT, value, model)]
    if isinstance(value, str):
        if _model_type(path, model) is ValueType.OBJLNK:
            return [Record(path, ValueType.OBJLNK, _objlnk(value))]
        return [Record(path, ValueType.STRING, value)]
    if isinstance(value, bytes):
        return [Record(path, ValueType.OPAQUE, value)]
    raise _bad("CBOR (60) carries one number, text, bytes or boolean")


def _cbor_value(r: Record) -> object:
    return r.value


# -- public API ----------------------------------------------------------------------------


def decode(
    payload: bytes,
    content_format: int | None,
    path: Lwm2mPath | str,
    *,
    now: float,
    model: ObjectModel = DEFAULT_MODEL,
) -> list[Record]:
    """Decode a Read/Observe/Send payload for the request ``path`` ("/" for Send).

    ``now`` resolves SenML/LwM2M JSON relative times. A missing content format means
    text (RFC 7252 default for LwM2M single values). Raises only ``InvalidArgument``.
    """
    base = path if isinstance(path, Lwm2mPath) else Lwm2mPath.parse(path)
    cf = CF_TEXT if content_format is None else content_format
    try:
        if cf == CF_SENML_JSON:
            return _senml(_json(payload), base, now, model, cbor=False)
        if cf == CF_SENML_CBOR:
            return _senml(_cbor(payload), base, now, model, cbor=True)
        if cf in (CF_TLV, CF_TLV_OLD):
            return _tlv(payload, base, model)
        if cf in (CF_LWM2M_JSON, CF_LWM2M_JSON_OLD):
            return _lwm2m_json(_json(payload), base, now, model)
        if cf == CF_TEXT:
            return _text(payload, base, model)
        if cf == CF_OPAQUE:
            return [Record(_single(base), ValueType.OPAQUE, bytes(payload))]
        if cf == CF_CBOR:
            return _cbor_single(payload, base, model)
    except IngressError as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise _bad(exc.message) from None
    except (RecursionError, ValueError, TypeError, OverflowError, struct.error):
        raise _bad("undecodable payload") from None
    raise InvalidArgument("unsupported content format")


def encode(records: Sequence[Record], content_format: int, path: Lwm2mPath | str) -> bytes:
    """Encode a Write payload for ``path`` (every record must lie under it).

    TLV, SenML JSON and SenML CBOR take several records; text, opaque and CBOR one
    (at ``path`` itself). TLV carries no time: record times are dropped.
    """
    base = path if isinstance(path, Lwm2mPath) else Lwm2mPath.parse(path)
    records = list(records)
    _check_records(records, base)
    if content_format == CF_TLV:
        return _encode_tlv(records, base)
    if content_format in (CF_SENML_JSON, CF_SENML_CBOR):
        cbor = content_format == CF_SENML_CBOR
        items: list[dict[Any, Any]] = []
        for r in records:
            item: dict[Any, Any] = {"n": str(r.path)}
            if r.type is ValueType.STRING:
                item["vs"] = r.value
            elif r.type is ValueType.BOOLEAN:
                item["vb"] = r.value
            elif r.type is ValueType.OBJLNK:
                item["vlo"] = r.value
            elif r.type is ValueType.OPAQUE:
                assert isinstance(r.value, bytes)
                item["vd"] = (
                    r.value if cbor else base64.urlsafe_b64encode(r.value).decode().rstrip("=")
                )
            else:
                item["v"] = r.value
            if r.time is not None:
                item["t"] = r.time
            if cbor:
                item = {_SENML_LABELS_BY_NAME.get(k, k): v for k, v in item.items()}
            items.append(item)
        if cbor:
            return cbor2.dumps(items)
        return json.dumps(items, separators=(",", ":"), allow_nan=False).encode()
    if content_format in (CF_TEXT, CF_OPAQUE, CF_CBOR):
        if len(records) != 1 or records[0].path != base or base.level < 3:
            raise InvalidArgument("this content format carries one value, at the path itself")
        r = records[0]
        if content_format == CF_TEXT:
            return _text_encode(r)
        if content_format == CF_CBOR:
            return cbor2.dumps(_cbor_value(r))
        if r.type is not ValueType.OPAQUE:
            raise InvalidArgument("opaque (42) carries an opaque value")
        assert isinstance(r.value, bytes)
        return r.value
    raise InvalidArgument("unsupported content format for writing")


__all__ = [
    "CF_CBOR",
    "CF_LINK_FORMAT",
    "CF_LWM2M_JSON",
    "CF_OPAQUE",
    "CF_SENML_CBOR",
    "CF_SENML_JSON",
    "CF_TEXT",
    "CF_TLV",
    "DECODABLE",
    "ENCODABLE",
    "Record",
    "check_value",
    "decode",
    "encode",
    "records_to_json",
]
