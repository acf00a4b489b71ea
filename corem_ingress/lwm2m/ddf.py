"""OMA DDF XML (LwM2M object definition files) -> ``ObjectDef``. Pure: bytes in.

The format of the OMA LwM2M Registry (``LWM2M-v1_1.xsd``): an ``<LWM2M>`` root holding
one or more ``<Object>``, each with ``ObjectID``, ``Name``, ``ObjectVersion``,
``MultipleInstances``, ``Mandatory`` and ``<Resources>`` of ``<Item ID="n">`` (``Name``,
``Operations``, ``MultipleInstances``, ``Mandatory``, ``Type``, ``RangeEnumeration``,
``Units``, ``Description``). Anything malformed raises ``InvalidArgument`` naming what.

A document with a DTD (``<!DOCTYPE``/``<!ENTITY``) is refused: DDF files need none, and
entity expansion is how XML bombs work.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.parsers import expat

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m.model import MAX_ID, ObjectDef, ResourceDef, ValueType

#: Largest DDF document read (the biggest OMA registry files are ~100 KiB).
MAX_DDF_BYTES = 1024 * 1024

_TYPES = {
    "string": ValueType.STRING,
    "integer": ValueType.INTEGER,
    "unsigned integer": ValueType.UNSIGNED,
    "float": ValueType.FLOAT,
    "boolean": ValueType.BOOLEAN,
    "opaque": ValueType.OPAQUE,
    "time": ValueType.TIME,
    "objlnk": ValueType.OBJLNK,
    # A CoRE link list travels as text.
    "corelnk": ValueType.STRING,
    "": ValueType.NONE,
}
_OPERATIONS = frozenset({"", "R", "W", "E", "RW"})


def _bad(where: str, what: str) -> InvalidArgument:
    return InvalidArgument(f"DDF {where}: {what}")


def _text(elem: ET.Element, tag: str, where: str, *, required: bool = True) -> str:
    child = elem.find(tag)
    if child is None:
        if required:
            raise _bad(where, f"<{tag}> is missing")
        return ""
    return (child.text or "").strip()


def _id(text: str, where: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 <= int(text) <= MAX_ID:
        raise _bad(where, f"{what} must be an id 0-{MAX_ID}, got {text[:16]!r}")
    return int(text)


def _flag(text: str, yes: str, no: str, where: str, what: str) -> bool:
    if text.lower() == yes.lower():
        return True
    if text.lower() == no.lower():
        return False
    raise _bad(where, f"{what} is {yes} or {no}, got {text[:16]!r}")


def _resource(item: ET.Element, where: str) -> ResourceDef:
    rid = _id((item.get("ID") or "").strip(), where, "Item ID")
    where = f"{where} resource {rid}"
    name = _text(item, "Name", where)
    ops = _text(item, "Operations", where, required=False).upper()
    if ops not in _OPERATIONS:
        raise _bad(where, f"Operations is R, W, E, RW or empty, got {ops[:8]!r}")
    type_text = _text(item, "Type", where, required=False).lower()
    vtype = _TYPES.get(type_text)
    if vtype is None:
        raise _bad(where, f"unknown Type {type_text[:24]!r}")
    if ops == "E":
        vtype = ValueType.NONE  # some files give an executable a Type: it carries no value
    elif vtype is ValueType.NONE:
        raise _bad(where, "a resource that is not executable needs a Type")
    return ResourceDef(
        rid,
        name,
        vtype,
        ops,
        multiple=_flag(
            _text(item, "MultipleInstances", where), "Multiple", "Single", where,
            "MultipleInstances",
        ),
        mandatory=_flag(
            _text(item, "Mandatory", where), "Mandatory", "Optional", where, "Mandatory"
        ),
        range=_text(item, "RangeEnumeration", where, required=False),
        units=_text(item, "Units", where, required=False),
        description=_text(item, "Description", where, required=False),
    )  # fmt: skip


def _object(elem: ET.Element, source: str) -> ObjectDef:
    where = source
    oid = _id(_text(elem, "ObjectID", where), where, "ObjectID")
    where = f"{source} object {oid}"
    resources: dict[int, ResourceDef] = {}
    container = elem.find("Resources")
    for item in [] if container is None else container.findall("Item"):
        res = _resource(item, where)
        if res.id in resources:
            raise _bad(where, f"resource {res.id} is defined twice")
        resources[res.id] = res
    return ObjectDef(
        oid,
        _text(elem, "Name", where),
        _text(elem, "ObjectVersion", where, required=False) or "1.0",
        _flag(
            _text(elem, "MultipleInstances", where), "Multiple", "Single", where,
            "MultipleInstances",
        ),
        resources,
        mandatory=_flag(
            _text(elem, "Mandatory", where), "Mandatory", "Optional", where, "Mandatory"
        ),
        urn=_text(elem, "ObjectURN", where, required=False),
        description=_text(elem, "Description1", where, required=False),
        lwm2m_version=_text(elem, "LWM2MVersion", where, required=False) or "1.0",
    )  # fmt: skip


class _HasDtd(Exception):
    pass


def _dtd_found(*_args: object) -> None:
    raise _HasDtd


def _refuse_dtd(data: bytes, source: str) -> None:
    """A first pass of expat that stops at any DOCTYPE or entity declaration, whatever
    the document's encoding (a byte search would miss a UTF-16 one)."""
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _dtd_found
    parser.EntityDeclHandler = _dtd_found
    parser.ExternalEntityRefHandler = _dtd_found  # type: ignore[assignment]
    try:
        parser.Parse(data, True)
    except _HasDtd:
        raise _bad(source, "a DTD (DOCTYPE/ENTITY) is not accepted") from None
    except expat.ExpatError as exc:
        raise _bad(source, f"not well-formed XML ({exc})") from None


def parse_ddf(data: bytes, *, source: str = "document") -> list[ObjectDef]:
    """The objects one DDF document defines (``source`` names it in errors)."""
    if len(data) > MAX_DDF_BYTES:
        raise _bad(source, f"larger than {MAX_DDF_BYTES} bytes")
    _refuse_dtd(data, source)
    try:
        # The document was parsed once without a DTD handler firing: no entity to expand.
        root = ET.fromstring(data)  # noqa: S314
    except ET.ParseError as exc:
        raise _bad(source, f"not well-formed XML ({exc})") from None
    if root.tag != "LWM2M":
        raise _bad(source, "the root element is not <LWM2M>")
    objects = [_object(elem, source) for elem in root.findall("Object")]
    if not objects:
        raise _bad(source, "defines no <Object>")
    seen: set[int] = set()
    for obj in objects:
        if obj.id in seen:
            raise _bad(source, f"object {obj.id} is defined twice")
        seen.add(obj.id)
    return objects


__all__ = ["MAX_DDF_BYTES", "parse_ddf"]
