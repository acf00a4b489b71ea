"""OMA TLV (11542) codec. TLV carries no types: values are typed with the object model
(unknown resources decode as opaque). Pure."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m.model import Lwm2mPath, ObjectModel, ValueType
from corem_ingress.lwm2m.records import MAX_RECORDS, Record, malformed, model_type

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
            raise malformed("TLV truncated in an identifier")
        ident = int.from_bytes(buf[i : i + id_len], "big")
        i += id_len
        if len_type == 0:
            length = t & 0x7
        else:
            if i + len_type > n:
                raise malformed("TLV truncated in a length")
            length = int.from_bytes(buf[i : i + len_type], "big")
            i += len_type
        if i + length > n:
            raise malformed("TLV value longer than the payload")
        if ident > 65534:
            raise malformed("TLV identifier out of range")
        out.append((kind, ident, buf[i : i + length]))
        i += length
        if len(out) > MAX_RECORDS:
            raise malformed("too many TLV entries")
    return out


def _tlv_value(path: Lwm2mPath, data: bytes, model: ObjectModel) -> Record:
    vtype = model_type(path, model)
    if vtype in (ValueType.INTEGER, ValueType.TIME, ValueType.UNSIGNED):
        if len(data) not in (1, 2, 4, 8):
            raise malformed("a TLV integer is 1, 2, 4 or 8 bytes")
        signed = vtype is not ValueType.UNSIGNED
        return Record(path, vtype, int.from_bytes(data, "big", signed=signed))
    if vtype is ValueType.FLOAT:
        if len(data) == 4:
            value = float(struct.unpack(">f", data)[0])
        elif len(data) == 8:
            value = float(struct.unpack(">d", data)[0])
        else:
            raise malformed("a TLV float is 4 or 8 bytes")
        return Record(path, vtype, value)
    if vtype is ValueType.BOOLEAN:
        if data not in (b"\x00", b"\x01"):
            raise malformed("a TLV boolean is one byte, 0 or 1")
        return Record(path, vtype, data == b"\x01")
    if vtype is ValueType.STRING:
        try:
            return Record(path, vtype, data.decode("utf-8"))
        except UnicodeDecodeError:
            raise malformed("a TLV string is not UTF-8") from None
    if vtype is ValueType.OBJLNK:
        if len(data) != 4:
            raise malformed("a TLV object link is 4 bytes")
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
                raise malformed("a multiple resource TLV holds resource instances")
            out.append(_tlv_value(path.child(ident), v, model))
        return out
    raise malformed("expected a resource TLV")


def decode_tlv(payload: bytes, base: Lwm2mPath, model: ObjectModel) -> list[Record]:
    entries = _tlv_entries(payload)
    out: list[Record] = []
    level = base.level
    if level == 0:
        raise malformed("TLV cannot carry the root path")
    if level == 2 and len(entries) == 1 and entries[0][:2] == (_OBJECT_INSTANCE, base.ids[1]):
        entries = _tlv_entries(entries[0][2])  # instance wrapped in its own TLV: accepted
    for kind, ident, value in entries:
        if level == 1:
            if kind != _OBJECT_INSTANCE:
                raise malformed("an object TLV holds object instances")
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
                raise malformed("a TLV resource id differs from the requested path")
        else:
            if kind != _RESOURCE_INSTANCE or ident != base.ids[3]:
                raise malformed("expected the requested resource instance")
            out.append(_tlv_value(base, value, model))
        if len(out) > MAX_RECORDS:
            raise malformed("too many records")
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


def encode_tlv(records: Sequence[Record], base: Lwm2mPath) -> bytes:
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
