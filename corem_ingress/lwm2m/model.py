"""LwM2M object definitions: resource ids, value types and allowed operations.

The OMA core objects a server meets on every client — 1 (Server), 2 (Access Control),
3 (Device), 4 (Connectivity Monitoring), 5 (Firmware Update), 6 (Location),
7 (Connectivity Statistics) — and 3303 (IPSO Temperature). Every decoder types a known
resource by this model, whatever the content format (``records.conform``). Unknown
objects are allowed everywhere; the model only sharpens types and refuses operations it
knows a resource does not support.
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


S, INT, U, F, B, T, OPQ, LNK = (
    ValueType.STRING,
    ValueType.INTEGER,
    ValueType.UNSIGNED,
    ValueType.FLOAT,
    ValueType.BOOLEAN,
    ValueType.TIME,
    ValueType.OPAQUE,
    ValueType.OBJLNK,
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
    R(9, "Bootstrap-Request Trigger", N, "E"),
    R(10, "APN Link", LNK, "RW"),
    R(11, "TLS-DTLS Alert Code", U, "R"),
    R(12, "Last Bootstrapped", T, "R"),
    R(13, "Registration Priority Order", U, "RW"),
    R(14, "Initial Registration Delay Timer", U, "RW"),
    R(15, "Registration Failure Block", B, "RW"),
    R(16, "Bootstrap on Registration Failure", B, "RW"),
    R(17, "Communication Retry Count", U, "RW"),
    R(18, "Communication Retry Timer", U, "RW"),
    R(19, "Communication Sequence Delay Timer", U, "RW"),
    R(20, "Communication Sequence Retry Count", U, "RW"),
    R(21, "Trigger", B, "RW"),
    R(22, "Preferred Transport", S, "RW"),
    R(23, "Mute Send", B, "RW"),
)  # fmt: skip

ACCESS_CONTROL = _obj(
    2, "LwM2M Access Control", "1.0", True,
    R(0, "Object ID", INT, "R", mandatory=True),
    R(1, "Object Instance ID", INT, "R", mandatory=True),
    R(2, "ACL", INT, "RW", multiple=True),
    R(3, "Access Control Owner", INT, "RW", mandatory=True),
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

CONNECTIVITY_MONITORING = _obj(
    4, "Connectivity Monitoring", "1.2", False,
    R(0, "Network Bearer", INT, "R", mandatory=True),
    R(1, "Available Network Bearer", INT, "R", multiple=True, mandatory=True),
    R(2, "Radio Signal Strength", INT, "R", mandatory=True),
    R(3, "Link Quality", INT, "R"),
    R(4, "IP Addresses", S, "R", multiple=True, mandatory=True),
    R(5, "Router IP Addresses", S, "R", multiple=True),
    R(6, "Link Utilization", INT, "R"),
    R(7, "APN", S, "R", multiple=True),
    R(8, "Cell ID", INT, "R"),
    R(9, "SMNC", INT, "R"),
    R(10, "SMCC", INT, "R"),
    R(11, "SignalSNR", INT, "R"),
    R(12, "LAC", INT, "R"),
)  # fmt: skip

FIRMWARE_UPDATE = _obj(
    5, "Firmware Update", "1.1", False,
    R(0, "Package", OPQ, "W", mandatory=True),
    R(1, "Package URI", S, "RW", mandatory=True),
    R(2, "Update", N, "E", mandatory=True),
    R(3, "State", INT, "R", mandatory=True),
    R(5, "Update Result", INT, "R", mandatory=True),
    R(6, "PkgName", S, "R"),
    R(7, "PkgVersion", S, "R"),
    R(8, "Firmware Update Protocol Support", INT, "R", multiple=True),
    R(9, "Firmware Update Delivery Method", INT, "R", mandatory=True),
    R(10, "Cancel", N, "E"),
    R(11, "Severity", INT, "RW"),
    R(12, "Last State Change Time", T, "R"),
    R(13, "Maximum Defer Period", U, "RW"),
)  # fmt: skip

LOCATION = _obj(
    6, "Location", "1.0", False,
    R(0, "Latitude", F, "R", mandatory=True),
    R(1, "Longitude", F, "R", mandatory=True),
    R(2, "Altitude", F, "R"),
    R(3, "Radius", F, "R"),
    R(4, "Velocity", OPQ, "R"),
    R(5, "Timestamp", T, "R", mandatory=True),
    R(6, "Speed", F, "R"),
)  # fmt: skip

CONNECTIVITY_STATISTICS = _obj(
    7, "Connectivity Statistics", "1.0", False,
    R(0, "SMS Tx Counter", INT, "R"),
    R(1, "SMS Rx Counter", INT, "R"),
    R(2, "Tx Data", INT, "R"),
    R(3, "Rx Data", INT, "R"),
    R(4, "Max Message Size", INT, "R"),
    R(5, "Average Message Size", INT, "R"),
    R(6, "Start", N, "E", mandatory=True),
    R(7, "Stop", N, "E"),
    R(8, "Collection Period", INT, "RW"),
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

DEFAULT_MODEL = ObjectModel(
    [
        SERVER,
        ACCESS_CONTROL,
        DEVICE,
        CONNECTIVITY_MONITORING,
        FIRMWARE_UPDATE,
        LOCATION,
        CONNECTIVITY_STATISTICS,
        TEMPERATURE,
    ]
)
EMPTY_MODEL = ObjectModel()

__all__ = [
    "ACCESS_CONTROL",
    "CONNECTIVITY_MONITORING",
    "CONNECTIVITY_STATISTICS",
    "DEFAULT_MODEL",
    "DEVICE",
    "EMPTY_MODEL",
    "FIRMWARE_UPDATE",
    "LOCATION",
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
