"""LwM2M object definitions: resource ids, value types and allowed operations.

The definitions come from OMA DDF XML files (``ddf.py`` reads them; ``objects.py`` ships
the core objects 0-7 and 3303 and adds those of ``lwm2m.models_dir``). Every decoder types
a known resource by the model, whatever the content format (``records.conform``); writes
are checked against its operations, types and ranges. Unknown objects are allowed
everywhere; the model only sharpens types and refuses what it knows a resource does not
support.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from corem_ingress.core.errors import InvalidArgument

#: Object, instance, resource and resource-instance ids are 16-bit; 65535 is reserved.
MAX_ID = 65534


@dataclass(frozen=True, slots=True, order=True)
class Lwm2mPath:
    """``/``, ``/3``, ``/3/0``, ``/3/0/7`` or ``/3/0/7/1`` as a tuple of ids."""

    ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.ids) > 4 or any(not 0 <= i <= MAX_ID for i in self.ids):
            raise InvalidArgument("an LwM2M path has at most 4 ids, each 0-65534")

    @classmethod
    def parse(cls, text: str) -> Lwm2mPath:
        """Strict: a leading '/', decimal ids without sign or leading zeros, no trailing '/'."""
        if not isinstance(text, str) or not text.startswith("/") or len(text) > 32:
            raise InvalidArgument("an LwM2M path looks like /3/0/1")
        if text == "/":
            return cls(())
        ids: list[int] = []
        for part in text[1:].split("/"):
            if not part.isascii() or not part.isdigit() or (len(part) > 1 and part[0] == "0"):
                raise InvalidArgument("an LwM2M path looks like /3/0/1")
            ids.append(int(part))
        return cls(tuple(ids))

    @classmethod
    def of(cls, *ids: int) -> Lwm2mPath:
        return cls(tuple(ids))

    def __str__(self) -> str:
        return "/" + "/".join(str(i) for i in self.ids)

    @property
    def level(self) -> int:
        """0 root, 1 object, 2 instance, 3 resource, 4 resource instance."""
        return len(self.ids)

    @property
    def object_id(self) -> int | None:
        return self.ids[0] if len(self.ids) > 0 else None

    @property
    def instance_id(self) -> int | None:
        return self.ids[1] if len(self.ids) > 1 else None

    @property
    def resource_id(self) -> int | None:
        return self.ids[2] if len(self.ids) > 2 else None

    @property
    def resource_instance_id(self) -> int | None:
        return self.ids[3] if len(self.ids) > 3 else None

    def child(self, i: int) -> Lwm2mPath:
        return Lwm2mPath((*self.ids, i))

    def is_prefix_of(self, other: Lwm2mPath) -> bool:
        return other.ids[: len(self.ids)] == self.ids

    @property
    def uri_path(self) -> tuple[str, ...]:
        return tuple(str(i) for i in self.ids)


class ValueType(StrEnum):
    """Value types of the decoded JSON shape (docs/lwm2m.md)."""

    STRING = "string"
    INTEGER = "integer"
    UNSIGNED = "unsigned"
    FLOAT = "float"
    BOOLEAN = "boolean"
    OPAQUE = "opaque"
    TIME = "time"
    OBJLNK = "objlnk"
    #: Executable resources carry no value.
    NONE = "none"


NUMERIC_TYPES = frozenset({ValueType.INTEGER, ValueType.UNSIGNED, ValueType.FLOAT, ValueType.TIME})


@dataclass(frozen=True, slots=True)
class ResourceDef:
    id: int
    name: str
    type: ValueType
    #: Subset of "RWE" ("" for none).
    operations: str
    multiple: bool = False
    mandatory: bool = False
    #: The DDF's RangeEnumeration as written ("0..100", "1..65534", "16,32,48"; "" none):
    #: the allowed values of a number, the allowed lengths (bytes) of a string or opaque.
    range: str = ""
    units: str = ""
    description: str = ""

    @property
    def readable(self) -> bool:
        return "R" in self.operations

    @property
    def writable(self) -> bool:
        return "W" in self.operations

    @property
    def executable(self) -> bool:
        return "E" in self.operations

    def out_of_range(self, value: object) -> str | None:
        """Why ``value`` is outside the resource's range (None: inside, or no range we
        understand). Numbers are checked against the range, text (UTF-8) and opaque by
        their length in bytes."""
        allowed = parse_range(self.range)
        if allowed is None:
            return None
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            measured: float = value
            what = "value"
        elif isinstance(value, str | bytes):
            measured = len(value.encode("utf-8") if isinstance(value, str) else value)
            what = "length"
        else:
            return None
        if any(lo <= measured <= hi for lo, hi in allowed):
            return None
        return f"{what} must be in {self.range}"

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "operations": self.operations,
            "multiple": self.multiple,
            "mandatory": self.mandatory,
            "type": self.type.value,
            "range": self.range,
            "units": self.units,
            "description": self.description,
        }


def parse_range(text: str) -> list[tuple[float, float]] | None:
    """``"0..255"``, ``"-40..85"``, ``"16,32,48"``, ``"6"`` -> allowed closed intervals;
    None for no range or an enumeration of words (not enforced)."""
    text = text.strip()
    if not text:
        return None
    out: list[tuple[float, float]] = []
    for part in text.split(","):
        part = part.strip()
        lo_text, sep, hi_text = part.partition("..")
        try:
            lo = float(lo_text)
            hi = float(hi_text) if sep else lo
        except ValueError:
            return None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            return None
        out.append((lo, hi))
    return out


@dataclass(frozen=True, slots=True)
class ObjectDef:
    id: int
    name: str
    version: str
    multiple_instances: bool
    resources: dict[int, ResourceDef]
    mandatory: bool = False
    urn: str = ""
    description: str = ""
    lwm2m_version: str = "1.0"

    def to_json(self, *, resources: bool = True) -> dict[str, object]:
        out: dict[str, object] = {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "lwm2m_version": self.lwm2m_version,
            "urn": self.urn,
            "multiple": self.multiple_instances,
            "mandatory": self.mandatory,
            "description": self.description,
        }
        if resources:
            out["resources"] = [r.to_json() for _, r in sorted(self.resources.items())]
        return out


class ObjectModel:
    """Lookup of object and resource definitions by id."""

    def __init__(self, objects: Iterable[ObjectDef] = ()) -> None:
        self._objects = {o.id: o for o in objects}

    def object(self, object_id: int) -> ObjectDef | None:
        return self._objects.get(object_id)

    def resource(self, object_id: int, resource_id: int) -> ResourceDef | None:
        obj = self._objects.get(object_id)
        return None if obj is None else obj.resources.get(resource_id)

    def resource_type(self, object_id: int, resource_id: int) -> ValueType | None:
        res = self.resource(object_id, resource_id)
        return None if res is None else res.type

    def object_ids(self) -> list[int]:
        return sorted(self._objects)

    def objects(self) -> list[ObjectDef]:
        return [self._objects[i] for i in sorted(self._objects)]

    def with_objects(self, objects: Iterable[ObjectDef]) -> ObjectModel:
        """This model plus ``objects``; one of ``objects`` replaces a definition of its id."""
        return ObjectModel([*self._objects.values(), *objects])

    def name_of(self, path: Lwm2mPath) -> str | None:
        """The name of the object (``/3``, ``/3/0``) or resource (``/3/0/9``, ``/3/0/7/1``)."""
        if path.object_id is None:
            return None
        if path.resource_id is None:
            obj = self.object(path.object_id)
            return None if obj is None else obj.name
        res = self.resource(path.object_id, path.resource_id)
        return None if res is None else res.name


EMPTY_MODEL = ObjectModel()

__all__ = [
    "EMPTY_MODEL",
    "MAX_ID",
    "NUMERIC_TYPES",
    "Lwm2mPath",
    "ObjectDef",
    "ObjectModel",
    "ResourceDef",
    "ValueType",
    "parse_range",
]
