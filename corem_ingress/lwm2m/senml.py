"""SenML JSON (110), SenML CBOR (112) and LwM2M 1.0 JSON (11543) codecs. Pure."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from typing import Any

import cbor2

from corem_ingress.core import json_text
from corem_ingress.core.errors import IngressError
from corem_ingress.lwm2m.model import Lwm2mPath, ObjectModel, ValueType
from corem_ingress.lwm2m.records import (
    MAX_RECORDS,
    Record,
    absolute_time,
    b64decode,
    check_objlnk,
    malformed,
    model_type,
    record_path,
    refine,
    under,
)

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
        raise malformed(f"{what} must be a number")
    if isinstance(x, float) and not math.isfinite(x):
        raise malformed(f"{what} must be finite")
    return x


def decode_senml(
    items: object, base: Lwm2mPath, now: float, model: ObjectModel, *, cbor: bool
) -> list[Record]:
    if not isinstance(items, list):
        raise malformed("SenML is an array of records")
    if len(items) > MAX_RECORDS:
        raise malformed("too many records")
    bn, bt, has_bt = "", 0.0, False
    bv: float | int = 0
    out: list[Record] = []
    for raw in items:
        if not isinstance(raw, dict):
            raise malformed("a SenML record is a map")
        rec: dict[str, Any] = {}
        for key, val in raw.items():
            name = _SENML_CBOR_LABELS.get(key) if cbor and isinstance(key, int) else key
            if not isinstance(name, str):
                raise malformed("unknown SenML label")
            if name not in _SENML_KNOWN:
                if name.endswith("_"):
                    raise malformed("unsupported mandatory SenML field")
                continue
            rec[name] = val
        if "bn" in rec:
            if not isinstance(rec["bn"], str):
                raise malformed("bn must be text")
            bn = rec["bn"]
        if "bt" in rec:
            bt = _number(rec["bt"], "bt")
            has_bt = True
        if "bv" in rec:
            bv = _number(rec["bv"], "bv")
        n = rec.get("n", "")
        if not isinstance(n, str):
            raise malformed("n must be text")
        present = [k for k in _VALUE_KEYS if k in rec]
        if not present:
            if ("bn" in rec or "bt" in rec or "bv" in rec) and not n:
                continue  # a base-only record
            raise malformed("a SenML record carries no value")
        if len(present) > 1:
            raise malformed("a SenML record carries more than one value")
        path = under(record_path(bn + n), base)
        key, val = present[0], rec[present[0]]
        t = rec.get("t")
        time = absolute_time(None if t is None and not has_bt else bt + _number(t or 0, "t"), now)
        if key == "v":
            num = _number(val, "v") + bv
            wire = ValueType.INTEGER if isinstance(num, int) else ValueType.FLOAT
            r = refine(path, wire, num, model)
        elif key == "vs":
            if not isinstance(val, str):
                raise malformed("vs must be text")
            r = Record(path, ValueType.STRING, val)
        elif key == "vb":
            if not isinstance(val, bool):
                raise malformed("vb must be a boolean")
            r = Record(path, ValueType.BOOLEAN, val)
        elif key == "vd":
            if cbor:
                if not isinstance(val, bytes):
                    raise malformed("vd must be a byte string")
                data = val
            else:
                if not isinstance(val, str):
                    raise malformed("vd must be base64url text")
                data = b64decode(val, urlsafe=True)
            r = Record(path, ValueType.OPAQUE, data)
        else:
            if not isinstance(val, str):
                raise malformed("vlo must be text like 3:0")
            r = Record(path, ValueType.OBJLNK, check_objlnk(val))
        out.append(Record(r.path, r.type, r.value, time))
    return out


def load_json(payload: bytes) -> object:
    """Strict JSON (``core/json_text.py``): a lone surrogate in a "vs" would otherwise reach
    the uplink stream and break its JSON consumers."""
    try:
        return json_text.loads(payload)
    except json_text.JsonTextError as exc:
        raise malformed(f"payload {exc.reason}") from None


def load_cbor(payload: bytes) -> object:
    try:
        return cbor2.loads(payload)
    except IngressError:
        raise
    except Exception:  # cbor2 raises CBORDecodeError and, on odd input, other errors
        raise malformed("not valid CBOR") from None


def encode_senml_names(paths: Sequence[Lwm2mPath], *, cbor: bool) -> bytes:
    """The payload of a Read-/Observe-Composite: SenML records with only a name."""
    if cbor:
        return cbor2.dumps([{_SENML_LABELS_BY_NAME["n"]: str(p)} for p in paths])
    return json.dumps([{"n": str(p)} for p in paths], separators=(",", ":")).encode()


def decode_senml_names(items: object, *, cbor: bool) -> list[Lwm2mPath]:
    """The paths of a Read-/Observe-Composite payload (``bn`` + ``n`` per record; values,
    if any, are ignored)."""
    if not isinstance(items, list) or not items:
        raise malformed("a composite request is a non-empty SenML array")
    if len(items) > MAX_RECORDS:
        raise malformed("too many records")
    bn = ""
    out: list[Lwm2mPath] = []
    for raw in items:
        if not isinstance(raw, dict):
            raise malformed("a SenML record is a map")
        rec = {
            (_SENML_CBOR_LABELS.get(k) if cbor and isinstance(k, int) else k): v
            for k, v in raw.items()
        }
        if "bn" in rec:
            if not isinstance(rec["bn"], str):
                raise malformed("bn must be text")
            bn = rec["bn"]
        n = rec.get("n", "")
        if not isinstance(n, str):
            raise malformed("n must be text")
        out.append(record_path(bn + n))
    return out


# -- LwM2M JSON (11543, LwM2M 1.0) -------------------------------------------------------


def _lwm2m_json_name(bn: str | None, n: str, base: Lwm2mPath) -> str:
    """LwM2M 1.0 JSON: a record's path is the plain concatenation of ``bn`` and ``n``
    (``"/3/0/"`` + ``"0"``, ``"/3/0"`` + ``"/0"``). Without ``bn``, a relative ``n`` is
    relative to the requested path."""
    if bn is not None:
        return bn + n
    if n.startswith("/"):
        return n
    prefix = str(base) if base.level else ""
    return prefix + "/" + n if n else str(base)


def decode_lwm2m_json(obj: object, base: Lwm2mPath, now: float, model: ObjectModel) -> list[Record]:
    if not isinstance(obj, dict) or not isinstance(obj.get("e"), list):
        raise malformed('LwM2M JSON is an object with an "e" array')
    bn = obj.get("bn")
    if bn is not None and not isinstance(bn, str):
        raise malformed("bn must be text")
    bt = _number(obj.get("bt", 0), "bt")
    has_bt = "bt" in obj
    entries = obj["e"]
    if len(entries) > MAX_RECORDS:
        raise malformed("too many records")
    out: list[Record] = []
    for e in entries:
        if not isinstance(e, dict):
            raise malformed("an entry is an object")
        n = e.get("n", "")
        if not isinstance(n, str):
            raise malformed("n must be text")
        path = under(record_path(_lwm2m_json_name(bn, n, base)), base)
        present = [k for k in ("v", "sv", "bv", "ov") if k in e]
        if len(present) != 1:
            raise malformed("an entry carries exactly one of v, sv, bv, ov")
        key, val = present[0], e[present[0]]
        if key == "v":
            num = _number(val, "v")
            wire = ValueType.INTEGER if isinstance(num, int) else ValueType.FLOAT
            r = refine(path, wire, num, model)
        elif key == "sv":
            if not isinstance(val, str):
                raise malformed("sv must be text")
            want = model_type(path, model)
            if want is ValueType.OPAQUE:
                r = Record(path, want, b64decode(val, urlsafe=False))
            else:
                r = Record(path, ValueType.STRING, val)
        elif key == "bv":
            if not isinstance(val, bool):
                raise malformed("bv must be a boolean")
            r = Record(path, ValueType.BOOLEAN, val)
        else:
            if not isinstance(val, str):
                raise malformed("ov must be text like 3:0")
            r = Record(path, ValueType.OBJLNK, check_objlnk(val))
        t = e.get("t")
        time = absolute_time(None if t is None and not has_bt else bt + _number(t or 0, "t"), now)
        out.append(Record(r.path, r.type, r.value, time))
    return out


def encode_senml(records: Sequence[Record], *, cbor: bool) -> bytes:
    """SenML JSON (``cbor`` False) or CBOR of ``records``, each named by its full path."""
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
            item["vd"] = r.value if cbor else base64.urlsafe_b64encode(r.value).decode().rstrip("=")
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
