"""LwM2M object definitions: resource ids, value types and allowed operations.

Only what the decoders, the request builders and the simulated client need:
objects 1 (Server), 3 (Device) and 3303 (IPSO Temperature). Unknown objects are
allowed everywhere; the model only sharpens types and refuses operations it knows
a resource does not support.
"""

from __future__ import annotations

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

    @property
    def readable(self) -> bool:
        return "R" in self.operations

    @property
    def writable(self) -> bool:
        return "W" in self.operations

    @property
    def executable(self) -> bool:
        return "E" in self.operations


@dataclass(frozen=True, slots=True)
class ObjectDef:
    id: int
    name: str
    version: str
    multiple_instances: bool
    resources: dict[int, ResourceDef]


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


def _obj(oid: int, name: str, version: str, multiple: bool, *res: ResourceDef) -> ObjectDef:
    return ObjectDef(oid, name, version, multiple, {r.id: r for r in res})


S, INT, U, F, B, T = (
    ValueType.STRING,
    ValueType.INTEGER,
    ValueType.UNSIGNED,
    ValueType.FLOAT,
    ValueType.BOOLEAN,
    ValueType.TIME,
)
N = ValueType.NONE
R = ResourceDef

SERVER = _obj(
    1, "LwM2M Server", "1.1", True,
    R(0, "Short Server ID", INT, "R", mandatory=True),
    R(1, "Lifetime", INT, "RW", mandatory=True),
    R(2, "Default Minimum Period", INT, "RW"),
    R(3, "Default Maximum Period", INT, "RW"),
    R(4, "Disable", N, "E"),
    R(5, "Disable Timeout", INT, "RW"),
    R(6, "Notification Storing When Disabled or Offline", B, "RW", mandatory=True),
    R(7, "Binding", S, "RW", mandatory=True),
    R(8, "Registration Update Trigger", N, "E", mandatory=True),
)  # fmt: skip

DEVICE = _obj(
    3, "Device", "1.1", False,
    R(0, "Manufacturer", S, "R"),
    R(1, "Model Number", S, "R"),
    R(2, "Serial Number", S, "R"),
    R(3, "Firmware Version", S, "R"),
    R(4, "Reboot", N, "E", mandatory=True),
    R(5, "Factory Reset", N, "E"),
    R(6, "Available Power Sources", INT, "R", multiple=True),
    R(7, "Power Source Voltage", INT, "R", multiple=True),
    R(8, "Power Source Current", INT, "R", multiple=True),
    R(9, "Battery Level", INT, "R"),
    R(10, "Memory Free", INT, "R"),
    R(11, "Error Code", INT, "R", multiple=True, mandatory=True),
    R(12, "Reset Error Code", N, "E"),
    R(13, "Current Time", T, "RW"),
    R(14, "UTC Offset", S, "RW"),
    R(15, "Timezone", S, "RW"),
    R(16, "Supported Binding and Modes", S, "R", mandatory=True),
    R(17, "Device Type", S, "R"),
    R(18, "Hardware Version", S, "R"),
    R(19, "Software Version", S, "R"),
    R(20, "Battery Status", INT, "R"),
    R(21, "Memory Total", INT, "R"),
)  # fmt: skip

TEMPERATURE = _obj(
    3303, "Temperature", "1.1", True,
    R(5518, "Timestamp", T, "R"),
    R(5601, "Min Measured Value", F, "R"),
    R(5602, "Max Measured Value", F, "R"),
    R(5603, "Min Range Value", F, "R"),
    R(5604, "Max Range Value", F, "R"),
    R(5605, "Reset Min and Max Measured Values", N, "E"),
    R(5700, "Sensor Value", F, "R", mandatory=True),
    R(5701, "Sensor Units", S, "R"),
    R(5750, "Application Type", S, "RW"),
)  # fmt: skip

DEFAULT_MODEL = ObjectModel([SERVER, DEVICE, TEMPERATURE])
EMPTY_MODEL = ObjectModel()

__all__ = [
    "DEFAULT_MODEL",
    "DEVICE",
    "EMPTY_MODEL",
    "MAX_ID",
    "NUMERIC_TYPES",
    "SERVER",
    "TEMPERATURE",
    "Lwm2mPath",
    "ObjectDef",
    "ObjectModel",
    "ResourceDef",
    "ValueType",
]
