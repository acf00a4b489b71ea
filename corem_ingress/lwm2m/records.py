"""The decoded value record (the one JSON shape of docs/lwm2m.md) and helpers shared by
the content-format codecs. Pure."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.uplink import JsonValue
from corem_ingress.lwm2m.model import Lwm2mPath, ObjectModel, ValueType
from corem_ingress.lwm2m.objects import DEFAULT_MODEL

MAX_RECORDS = 4096
#: SenML: times below 2**28 are relative to "now" (RFC 8428 4.5.3).
RELATIVE_TIME_LIMIT = 2**28
INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)

Scalar = int | float | bool | str | bytes


def malformed(what: str) -> InvalidArgument:
    return InvalidArgument(f"malformed payload: {what}")


def check_objlnk(value: str) -> str:
    m = re.fullmatch(r"(0|[1-9][0-9]{0,4}):(0|[1-9][0-9]{0,4})", value)
    if m is None or int(m[1]) > 65535 or int(m[2]) > 65535:
        raise malformed("an object link looks like 3:0 (two ids 0-65535)")
    return value


def check_value(vtype: ValueType, value: object) -> Scalar:
    """``value`` normalised for ``vtype`` (int -> float for FLOAT), or InvalidArgument."""
    if vtype is ValueType.FLOAT:
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, float) or not math.isfinite(value):
            raise malformed("a float value must be a finite number")
        return value
    if vtype in (ValueType.INTEGER, ValueType.TIME, ValueType.UNSIGNED):
        lo, hi = UINT64 if vtype is ValueType.UNSIGNED else INT64
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise malformed(f"an {vtype.value} value must be an integer in range")
        return value
    if vtype is ValueType.BOOLEAN:
        if not isinstance(value, bool):
            raise malformed("a boolean value must be true or false")
        return value
    if vtype is ValueType.STRING:
        if not isinstance(value, str):
            raise malformed("a string value must be text")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise malformed("a string value must be valid Unicode") from None
        return value
    if vtype is ValueType.OPAQUE:
        if not isinstance(value, bytes):
            raise malformed("an opaque value must be bytes")
        return value
    if vtype is ValueType.OBJLNK:
        if not isinstance(value, str):
            raise malformed("an object link must be text like 3:0")
        return check_objlnk(value)
    raise malformed("a value of type none cannot be carried")


@dataclass(frozen=True, slots=True)
class Record:
    """One resource (or resource instance) value."""

    path: Lwm2mPath
    type: ValueType
    value: Scalar
    time: float | None = None

    def __post_init__(self) -> None:
        if self.path.level < 3:
            raise malformed("a value belongs to a resource or resource instance path")
        object.__setattr__(self, "value", check_value(self.type, self.value))
        if self.time is not None and (isinstance(self.time, bool) or not math.isfinite(self.time)):
            raise malformed("time must be a finite number")

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
        vtype = model_type(path, model)
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
            value = b64decode(value, urlsafe=False)
        time = data.get("time")
        if time is not None and (isinstance(time, bool) or not isinstance(time, int | float)):
            raise InvalidArgument("time must be a number")
        return cls(path, vtype, value, None if time is None else float(time))  # type: ignore[arg-type]


def records_to_json(records: Iterable[Record]) -> list[JsonValue]:
    return [r.to_json() for r in records]


def model_type(path: Lwm2mPath, model: ObjectModel) -> ValueType | None:
    if path.level < 3:
        return None
    assert path.object_id is not None and path.resource_id is not None
    return model.resource_type(path.object_id, path.resource_id)


def b64decode(text: str, *, urlsafe: bool) -> bytes:
    if urlsafe:
        if not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
            raise malformed("bad base64url data")
        text = text.rstrip("=")
        text += "=" * (-len(text) % 4)
        try:
            return base64.urlsafe_b64decode(text)
        except (binascii.Error, ValueError):
            raise malformed("bad base64url data") from None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise malformed("bad base64 data") from None


_INT_RE = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def parse_text(text: str, vtype: ValueType) -> Scalar:
    """A value in its LwM2M plain-text form (content format 0) as ``vtype``."""
    if vtype in (ValueType.INTEGER, ValueType.TIME, ValueType.UNSIGNED):
        if not _INT_RE.fullmatch(text) or len(text) > 21:
            raise malformed(f"expected an integer for a {vtype.value} resource")
        return int(text)
    if vtype is ValueType.FLOAT:
        if not _FLOAT_RE.fullmatch(text) or len(text) > 64:
            raise malformed("expected a number for a float resource")
        return float(text)
    if vtype is ValueType.BOOLEAN:
        if text not in ("0", "1"):
            raise malformed("expected 0 or 1 for a boolean resource")
        return text == "1"
    if vtype is ValueType.OPAQUE:
        return b64decode(text, urlsafe=False)
    if vtype is ValueType.OBJLNK:
        return check_objlnk(text)
    return text


def text_form(vtype: ValueType, value: Scalar) -> str:
    """The LwM2M plain-text form of a value (booleans 0/1, opaque as base64)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)


def conform(record: Record, model: ObjectModel) -> Record:
    """``record`` with the type the object model gives its resource, whatever the content
    format carried: numbers convert between numeric types where exact, anything else goes
    through its plain-text form (SenML ``"vs": "1"`` for an Integer resource is 1). A value
    the model's type cannot hold is malformed. Unknown resources keep the wire's type."""
    want = model_type(record.path, model)
    if want is None or want is ValueType.NONE or want is record.type:
        return record
    numeric = (ValueType.INTEGER, ValueType.UNSIGNED, ValueType.FLOAT, ValueType.TIME)
    if record.type in numeric and want in numeric:
        typed = refine(record.path, record.type, record.value, model)
        if typed.type is not want:
            raise malformed(f"{record.path} takes a {want.value} value")
        return Record(record.path, want, typed.value, record.time)
    if record.type is ValueType.BOOLEAN and want is not ValueType.STRING:
        raise malformed(f"{record.path} takes a {want.value} value, not a boolean")
    if isinstance(record.value, bytes):  # opaque bytes hold text as UTF-8 (as TLV does)
        if want is not ValueType.STRING:
            raise malformed(f"{record.path} takes a {want.value} value, not opaque bytes")
        try:
            return Record(record.path, want, record.value.decode("utf-8"), record.time)
        except UnicodeDecodeError:
            raise malformed(f"{record.path} takes text (UTF-8)") from None
    value = parse_text(text_form(record.type, record.value), want)
    return Record(record.path, want, value, record.time)


def refine(path: Lwm2mPath, wire: ValueType, value: Scalar, model: ObjectModel) -> Record:
    """Type a value decoded from a self-describing format with the model where they agree."""
    want = model_type(path, model)
    if want is not None and want is not wire:
        if want is ValueType.FLOAT and wire is ValueType.INTEGER:
            return Record(path, want, float(value))
        if (
            want in (ValueType.INTEGER, ValueType.TIME, ValueType.UNSIGNED)
            and wire in (ValueType.INTEGER, ValueType.FLOAT)
            and float(value).is_integer()
        ):
            lo, hi = UINT64 if want is ValueType.UNSIGNED else INT64
            if lo <= int(value) <= hi:
                return Record(path, want, int(value))
    return Record(path, wire, value)


def absolute_time(t: float | None, now: float) -> float | None:
    if t is None:
        return None
    if not math.isfinite(t):
        raise malformed("time must be finite")
    return t if abs(t) >= RELATIVE_TIME_LIMIT else now + t


def under(path: Lwm2mPath, base: Lwm2mPath) -> Lwm2mPath:
    if not base.is_prefix_of(path):
        raise malformed("a record lies outside the requested path")
    return path


def record_path(text: object) -> Lwm2mPath:
    if not isinstance(text, str):
        raise malformed("a record name must be a path")
    try:
        return Lwm2mPath.parse(text)
    except InvalidArgument:
        raise malformed("a record name is not an LwM2M path") from None


def check_records(records: Sequence[Record], base: Lwm2mPath) -> None:
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
