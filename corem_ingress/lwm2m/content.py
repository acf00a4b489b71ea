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

import math
import struct
from collections.abc import Sequence

import cbor2

from corem_ingress.core.errors import IngressError, InvalidArgument
from corem_ingress.lwm2m.model import Lwm2mPath, ObjectModel, ValueType
from corem_ingress.lwm2m.objects import DEFAULT_MODEL
from corem_ingress.lwm2m.records import (
    INT64,
    MAX_RECORDS,
    RELATIVE_TIME_LIMIT,
    Record,
    Scalar,
    check_objlnk,
    check_records,
    check_value,
    conform,
    malformed,
    model_type,
    parse_text,
    records_to_json,
    refine,
    text_form,
)
from corem_ingress.lwm2m.senml import (
    decode_lwm2m_json,
    decode_senml,
    encode_senml,
    load_cbor,
    load_json,
)
from corem_ingress.lwm2m.tlv import decode_tlv, encode_tlv

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


# -- single values: text (0), opaque (42), CBOR (60) --------------------------------------


def _single(base: Lwm2mPath) -> Lwm2mPath:
    if base.level < 3:
        raise malformed("this content format carries one resource value")
    return base


def _text(payload: bytes, base: Lwm2mPath, model: ObjectModel) -> list[Record]:
    path = _single(base)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed("text is not UTF-8") from None
    vtype = model_type(path, model) or ValueType.STRING
    if vtype is ValueType.NONE:
        vtype = ValueType.STRING
    return [Record(path, vtype, parse_text(text, vtype))]


def _cbor_single(payload: bytes, base: Lwm2mPath, model: ObjectModel) -> list[Record]:
    path = _single(base)
    value = load_cbor(payload)
    if isinstance(value, bool):
        return [Record(path, ValueType.BOOLEAN, value)]
    if isinstance(value, int):
        wire = ValueType.INTEGER if value >= INT64[0] and value <= INT64[1] else ValueType.UNSIGNED
        return [refine(path, wire, value, model)]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise malformed("non-finite number")
        return [refine(path, ValueType.FLOAT, value, model)]
    if isinstance(value, str):
        if model_type(path, model) is ValueType.OBJLNK:
            return [Record(path, ValueType.OBJLNK, check_objlnk(value))]
        return [Record(path, ValueType.STRING, value)]
    if isinstance(value, bytes):
        return [Record(path, ValueType.OPAQUE, value)]
    raise malformed("CBOR (60) carries one number, text, bytes or boolean")


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
    return [conform(r, model) for r in _decode(payload, content_format, base, now, model)]


def _decode(
    payload: bytes, content_format: int | None, base: Lwm2mPath, now: float, model: ObjectModel
) -> list[Record]:
    cf = CF_TEXT if content_format is None else content_format
    try:
        if cf == CF_SENML_JSON:
            return decode_senml(load_json(payload), base, now, model, cbor=False)
        if cf == CF_SENML_CBOR:
            return decode_senml(load_cbor(payload), base, now, model, cbor=True)
        if cf in (CF_TLV, CF_TLV_OLD):
            return decode_tlv(payload, base, model)
        if cf in (CF_LWM2M_JSON, CF_LWM2M_JSON_OLD):
            return decode_lwm2m_json(load_json(payload), base, now, model)
        if cf == CF_TEXT:
            return _text(payload, base, model)
        if cf == CF_OPAQUE:
            return [Record(_single(base), ValueType.OPAQUE, bytes(payload))]
        if cf == CF_CBOR:
            return _cbor_single(payload, base, model)
    except IngressError as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise malformed(exc.message) from None
    except (RecursionError, ValueError, TypeError, OverflowError, struct.error):
        raise malformed("undecodable payload") from None
    raise InvalidArgument("unsupported content format")


def encode(records: Sequence[Record], content_format: int, path: Lwm2mPath | str) -> bytes:
    """Encode a Write payload for ``path`` (every record must lie under it).

    TLV, SenML JSON and SenML CBOR take several records; text, opaque and CBOR one
    (at ``path`` itself). TLV carries no time: record times are dropped.
    """
    base = path if isinstance(path, Lwm2mPath) else Lwm2mPath.parse(path)
    records = list(records)
    check_records(records, base)
    if content_format == CF_TLV:
        return encode_tlv(records, base)
    if content_format in (CF_SENML_JSON, CF_SENML_CBOR):
        return encode_senml(records, cbor=content_format == CF_SENML_CBOR)
    if content_format in (CF_TEXT, CF_OPAQUE, CF_CBOR):
        if len(records) != 1 or records[0].path != base or base.level < 3:
            raise InvalidArgument("this content format carries one value, at the path itself")
        r = records[0]
        if content_format == CF_TEXT:
            return text_form(r.type, r.value).encode("utf-8")
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
    "MAX_RECORDS",
    "RELATIVE_TIME_LIMIT",
    "Record",
    "Scalar",
    "check_value",
    "decode",
    "encode",
    "records_to_json",
]
