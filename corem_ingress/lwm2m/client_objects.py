"""A simulated LwM2M client's object model: objects 3 (Device), 1 (Server), 3303 (Temperature),
and optionally 5 (Firmware Update: pull by Package URI, push by a Package write).

Pure: no sockets, time from the ``clock`` passed in. The fleet simulator
(``corem_ingress/sim/``) drives it from a CoAP/DTLS client: it registers with
``register_query()`` + ``register_payload()``, hands every server request to
``handle()`` and sends back the ``ClientResponse``; values change through
``set_temperature()``; ``send_payload()`` is the LwM2M 1.1 Send (``POST /dp``)
body. Side effects the transport must act on (a new lifetime to announce in an
Update, a reboot) come out of ``next_event()``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m.content import (
    CF_CBOR,
    CF_LINK_FORMAT,
    CF_OPAQUE,
    CF_SENML_CBOR,
    CF_SENML_JSON,
    CF_TEXT,
    CF_TLV,
    Record,
    check_value,
    decode,
    encode,
)
from corem_ingress.lwm2m.linkformat import (
    LWM2M_RT,
    Link,
    ObjectLink,
    ObjectList,
    serialize_links,
)
from corem_ingress.lwm2m.model import Lwm2mPath, ResourceDef, ValueType
from corem_ingress.lwm2m.objects import DEFAULT_MODEL
from corem_ingress.lwm2m.senml import decode_senml_names, load_cbor, load_json

Value = int | float | bool | str | bytes


@dataclass(frozen=True, slots=True)
class ClientResponse:
    code: str
    content_format: int | None = None
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Executed:
    path: Lwm2mPath
    args: str


@dataclass(frozen=True, slots=True)
class LifetimeChanged:
    """The server wrote /1/0/1: the client should send an Update with ``lt``."""

    lifetime_s: int


@dataclass(frozen=True, slots=True)
class UpdateTriggered:
    """The server executed /1/0/8 (Registration Update Trigger)."""


@dataclass(frozen=True, slots=True)
class RebootRequested:
    """The server executed /3/0/4."""


@dataclass(frozen=True, slots=True)
class FirmwareUriWritten:
    """The server wrote /5/0/1: the transport fetches the package from ``uri`` and hands it
    to ``firmware_downloaded`` (or ``firmware_download_failed``)."""

    uri: str


@dataclass(frozen=True, slots=True)
class FirmwareChanged:
    """/5/0/3 or /5/0/5 changed: the transport notifies their observers."""

    paths: tuple[Lwm2mPath, ...]


@dataclass(frozen=True, slots=True)
class FirmwareApplying:
    """The server executed /5/0/2: the transport calls ``finish_update`` a moment later."""


ClientEvent = (
    Executed
    | LifetimeChanged
    | UpdateTriggered
    | RebootRequested
    | FirmwareUriWritten
    | FirmwareChanged
    | FirmwareApplying
)
_FW_STATE = Lwm2mPath.of(5, 0, 3)
_FW_RESULT = Lwm2mPath.of(5, 0, 5)

#: RFC 8790 SenML-etch (also accepted for a composite request's list of paths).
CF_SENML_ETCH_JSON = 320
CF_SENML_ETCH_CBOR = 322
_SUPPORTED = (CF_TEXT, CF_OPAQUE, CF_CBOR, CF_TLV, CF_SENML_JSON, CF_SENML_CBOR)
_INSTANCES = ((1, 0), (3, 0), (3303, 0))
_CREATABLE = frozenset({3303})
_ATTRIBUTE_NAMES = frozenset({"pmin", "pmax", "gt", "lt", "st", "epmin", "epmax"})


class SimulatedClient:
    def __init__(
        self,
        endpoint: str,
        *,
        clock: Callable[[], float],
        version: str = "1.1",
        lifetime_s: int = 300,
        binding: str = "U",
        short_server_id: int = 1,
        temperature: float = 21.5,
        manufacturer: str = "CORE-M",
        model_number: str = "corem-sim-1",
        firmware: str = "1.0.0",
        firmware_update: bool = False,
        firmware_result: int = 1,
    ) -> None:
        if version not in ("1.0", "1.1"):
            raise InvalidArgument("the simulated client speaks LwM2M 1.0 or 1.1")
        self.endpoint = endpoint
        self.version = version
        self._clock = clock
        self._events: collections.deque[ClientEvent] = collections.deque()
        self.default_format = CF_SENML_JSON if version == "1.1" else CF_TLV
        #: The Update Result a firmware update ends with (1 success; 2..9 failures).
        self.firmware_result = firmware_result
        #: The last firmware package received (pull or push).
        self.package = b""
        self.values: dict[Lwm2mPath, Value] = {}
        #: (object, instance) pairs that exist; Create / Delete change those of 3303.
        self.instances: set[tuple[int, int]] = set(_INSTANCES)
        if firmware_update:
            self.instances.add((5, 0))
        #: Write-Attributes per path: name -> value as written.
        self.attributes: dict[Lwm2mPath, dict[str, str]] = {}
        p = Lwm2mPath.of
        self.values.update(
            {
                p(1, 0, 0): short_server_id,
                p(1, 0, 1): lifetime_s,
                p(1, 0, 2): 0,
                p(1, 0, 3): 0,
                p(1, 0, 5): 86400,
                p(1, 0, 6): False,
                p(1, 0, 7): binding,
                p(3, 0, 0): manufacturer,
                p(3, 0, 1): model_number,
                p(3, 0, 2): endpoint,
                p(3, 0, 3): firmware,
                p(3, 0, 6, 0): 1,
                p(3, 0, 7, 0): 3800,
                p(3, 0, 9): 100,
                p(3, 0, 11, 0): 0,
                p(3, 0, 14): "+00:00",
                p(3, 0, 15): "Etc/UTC",
                p(3, 0, 16): "U" if version == "1.0" else "UQ",
                p(3303, 0, 5700): temperature,
                p(3303, 0, 5601): temperature,
                p(3303, 0, 5602): temperature,
                p(3303, 0, 5603): -40.0,
                p(3303, 0, 5604): 85.0,
                p(3303, 0, 5701): "Cel",
            }
        )
        if version == "1.1":
            self.values[p(3303, 0, 5518)] = int(clock())
        if firmware_update:
            self.values.update(
                {
                    p(5, 0, 0): b"",  # write-only: never read back
                    p(5, 0, 1): "",
                    p(5, 0, 3): 0,
                    p(5, 0, 5): 0,
                    p(5, 0, 6): "",
                    p(5, 0, 7): "",
                    p(5, 0, 9): 2,  # pull and push
                }
            )

    # -- registration -----------------------------------------------------------------------
    @property
    def lifetime_s(self) -> int:
        value = self.values[Lwm2mPath.of(1, 0, 1)]
        assert isinstance(value, int)
        return value

    @property
    def binding(self) -> str:
        value = self.values[Lwm2mPath.of(1, 0, 7)]
        assert isinstance(value, str)
        return value

    def object_list(self) -> ObjectList:
        cts = (CF_SENML_CBOR, CF_SENML_JSON, CF_TLV) if self.version == "1.1" else ()
        objects = tuple(ObjectLink(o, i) for o, i in sorted(self.instances))
        return ObjectList(objects, "/", cts)

    def register_query(self) -> list[str]:
        return [
            f"ep={self.endpoint}",
            f"lt={self.lifetime_s}",
            f"lwm2m={self.version}",
            f"b={self.binding}",
        ]

    def register_payload(self) -> bytes:
        return self.object_list().to_link_format().encode()

    def next_event(self) -> ClientEvent | None:
        return self._events.popleft() if self._events else None

    # -- values -----------------------------------------------------------------------------
    def _record(self, path: Lwm2mPath, value: Value) -> Record:
        res = self._res(path)
        assert res is not None
        return Record(path, res.type, value)

    def _res(self, path: Lwm2mPath) -> ResourceDef | None:
        if path.level < 3:
            return None
        assert path.object_id is not None and path.resource_id is not None
        return DEFAULT_MODEL.resource(path.object_id, path.resource_id)

    def current(self, path: Lwm2mPath) -> list[Record]:
        """Readable values under ``path`` (Current Time read from the clock)."""
        out = [
            self._record(p, v)
            for p, v in sorted(self.values.items())
            if path.is_prefix_of(p) and (r := self._res(p)) is not None and r.readable
        ]
        current_time = Lwm2mPath.of(3, 0, 13)
        if path.is_prefix_of(current_time):
            out.append(self._record(current_time, int(self._clock())))
            out.sort(key=lambda r: r.path)
        return out

    def set_temperature(self, value: float) -> list[Record]:
        """A new reading (min/max and timestamp follow); returns the changed records."""
        p = Lwm2mPath.of
        value = float(value)
        check_value(ValueType.FLOAT, value)
        self.values[p(3303, 0, 5700)] = value
        lo, hi = self.values[p(3303, 0, 5601)], self.values[p(3303, 0, 5602)]
        assert isinstance(lo, float) and isinstance(hi, float)
        self.values[p(3303, 0, 5601)] = min(lo, value)
        self.values[p(3303, 0, 5602)] = max(hi, value)
        changed = [p(3303, 0, 5700), p(3303, 0, 5601), p(3303, 0, 5602)]
        if self.version == "1.1":
            self.values[p(3303, 0, 5518)] = int(self._clock())
            changed.append(p(3303, 0, 5518))
        return [self._record(c, self.values[c]) for c in changed]

    def send_payload(self, paths: Sequence[str], *, cbor: bool = False) -> tuple[int, bytes]:
        """LwM2M 1.1 Send (``POST /dp``): SenML of ``paths`` stamped with the clock."""
        now = float(self._clock())
        records: list[Record] = []
        for text in paths:
            for r in self.current(Lwm2mPath.parse(text)):
                records.append(Record(r.path, r.type, r.value, now))
        if not records:
            raise InvalidArgument("nothing to send")
        cf = CF_SENML_CBOR if cbor else CF_SENML_JSON
        return cf, encode(records, cf, Lwm2mPath())

    # -- server requests --------------------------------------------------------------------
    def _exists(self, path: Lwm2mPath) -> bool:
        if path.level == 0:
            return True
        if path.level == 1:
            return path.object_id in _CREATABLE or any(
                o == path.object_id for o, _ in self.instances
            )
        if path.level == 2:
            return (path.object_id, path.instance_id) in self.instances
        if path == Lwm2mPath.of(3, 0, 13):
            return True
        res = self._res(path)
        if res is None or not self._exists(Lwm2mPath(path.ids[:2])):
            return False
        if res.executable:
            return path.level == 3
        return any(path.is_prefix_of(p) for p in self.values)

    def handle(
        self,
        method: str,
        uri_path: Sequence[str],
        *,
        uri_query: Sequence[str] = (),
        content_format: int | None = None,
        accept: int | None = None,
        payload: bytes = b"",
    ) -> ClientResponse:
        """Answer one server request (the CoAP client passes the request's fields)."""
        try:
            path = Lwm2mPath.parse("/" + "/".join(uri_path))
        except InvalidArgument:
            return ClientResponse("4.04")
        if not self._exists(path):
            return ClientResponse("4.04")
        if method == "FETCH" and path.level == 0:
            return self.read_composite(content_format, payload, accept)
        if method == "iPATCH" and path.level == 0:
            return self.write_composite(content_format, payload)
        if method == "GET":
            if accept == CF_LINK_FORMAT:
                return self.discover(path)
            return self.read(path, accept)
        if method == "PUT" and uri_query and not payload:
            return self.write_attributes(path, uri_query)
        if method == "PUT":
            return self.write(path, content_format, payload, replace=True)
        if method == "POST" and path.level == 1:
            return self.create(path, content_format, payload)
        if method == "DELETE":
            return self.delete(path)
        if method == "POST":
            if path.level == 3 and (res := self._res(path)) is not None and res.executable:
                return self.execute(path, payload)
            return self.write(path, content_format, payload, replace=False)
        return ClientResponse("4.05")

    def read(self, path: Lwm2mPath, accept: int | None = None) -> ClientResponse:
        res = self._res(path)
        if res is not None and not res.readable:
            return ClientResponse("4.05")
        if path.level == 0:
            return ClientResponse("4.05")
        cf = self.default_format if accept is None else accept
        if cf not in _SUPPORTED:
            return ClientResponse("4.06")
        records = self.current(path)
        if accept is None and path.level >= 3 and len(records) == 1 and records[0].path == path:
            cf = CF_TEXT if records[0].type is not ValueType.OPAQUE else CF_OPAQUE
        try:
            return ClientResponse("2.05", cf, encode(records, cf, path))
        except InvalidArgument:
            return ClientResponse("4.06")

    def write(
        self, path: Lwm2mPath, content_format: int | None, payload: bytes, *, replace: bool
    ) -> ClientResponse:
        if path.level < 2:
            return ClientResponse("4.05")
        try:
            records = decode(payload, content_format, path, now=self._clock())
        except InvalidArgument:
            return ClientResponse("4.00")
        if (refused := self._refuse_write(records)) is not None:
            return refused
        for r in records:
            if replace and r.path.level == 4:
                parent = Lwm2mPath(r.path.ids[:3])
                for old in [p for p in self.values if parent.is_prefix_of(p)]:
                    del self.values[old]
        return self._store(records)

    def _store(self, records: Sequence[Record]) -> ClientResponse:
        for r in records:
            self.values[r.path] = r.value
            if r.path == Lwm2mPath.of(1, 0, 1):
                assert isinstance(r.value, int)
                self._events.append(LifetimeChanged(r.value))
            elif r.path == Lwm2mPath.of(5, 0, 0):
                assert isinstance(r.value, bytes)
                self._package_written(r.value)
            elif r.path == Lwm2mPath.of(5, 0, 1):
                assert isinstance(r.value, str)
                self._uri_written(r.value)
        return ClientResponse("2.04")

    def composite_paths(self, content_format: int | None, payload: bytes) -> list[Lwm2mPath]:
        """The paths of a Read-/Observe-Composite body (SenML names; InvalidArgument)."""
        if content_format in (CF_SENML_JSON, CF_SENML_ETCH_JSON):
            return decode_senml_names(load_json(payload), cbor=False)
        if content_format in (CF_SENML_CBOR, CF_SENML_ETCH_CBOR):
            return decode_senml_names(load_cbor(payload), cbor=True)
        raise InvalidArgument("composite requests are SenML")

    def read_composite(
        self, content_format: int | None, payload: bytes, accept: int | None
    ) -> ClientResponse:
        """Read-Composite: the readable values under every existing path asked for (the
        missing ones are left out; 4.04 when none exists)."""
        if self.version == "1.0":
            return ClientResponse("4.05")
        try:
            paths = self.composite_paths(content_format, payload)
        except InvalidArgument:
            return ClientResponse("4.00")
        return self.composite_answer(paths, accept)

    def composite_answer(self, paths: Sequence[Lwm2mPath], accept: int | None) -> ClientResponse:
        cf = CF_SENML_JSON if accept is None else accept
        if cf not in (CF_SENML_JSON, CF_SENML_CBOR):
            return ClientResponse("4.06")
        records: list[Record] = []
        for p in paths:
            if self._exists(p) and p.level > 0:
                records += [r for r in self.current(p) if r not in records]
        if not records:
            return ClientResponse("4.04")
        return ClientResponse("2.05", cf, encode(records, cf, Lwm2mPath()))

    def _refuse_write(self, records: Sequence[Record]) -> ClientResponse | None:
        """The answer to a Write of ``records`` that cannot be done (None: it can)."""
        if not records:
            return ClientResponse("4.00")
        for r in records:
            res = self._res(r.path)
            if res is None or not self._exists(Lwm2mPath(r.path.ids[:2])):
                return ClientResponse("4.04")
            if not res.writable:
                return ClientResponse("4.05")
            if res.type is not r.type or (r.path.level == 4) != res.multiple:
                return ClientResponse("4.00")
        return None

    def write_composite(self, content_format: int | None, payload: bytes) -> ClientResponse:
        """Write-Composite: all values or none (4.04 / 4.05 / 4.00 for the first bad one)."""
        if self.version == "1.0":
            return ClientResponse("4.05")
        if content_format not in (CF_SENML_JSON, CF_SENML_CBOR):
            return ClientResponse("4.15")
        try:
            records = decode(payload, content_format, Lwm2mPath(), now=self._clock())
        except InvalidArgument:
            return ClientResponse("4.00")
        if (refused := self._refuse_write(records)) is not None:
            return refused
        return self._store(records)

    def create(self, path: Lwm2mPath, content_format: int | None, payload: bytes) -> ClientResponse:
        """Create instance(s) of 3303 (the only multiple-instance object here) with the ids
        the payload names; 4.05 for another object, 4.00 for an instance that exists."""
        if path.object_id not in _CREATABLE:
            return ClientResponse("4.05")
        try:
            records = decode(payload, content_format, path, now=self._clock())
        except InvalidArgument:
            return ClientResponse("4.00")
        new = {(r.path.ids[0], r.path.ids[1]) for r in records}
        if not records or new & self.instances:
            return ClientResponse("4.00")
        for r in records:
            res = self._res(r.path)
            if res is None or res.type is not r.type or (r.path.level == 4) != res.multiple:
                return ClientResponse("4.00")
        self.instances |= new
        for r in records:
            self.values[r.path] = r.value
        return ClientResponse("2.01")

    def delete(self, path: Lwm2mPath) -> ClientResponse:
        if path.level != 2 or path.object_id not in _CREATABLE:
            return ClientResponse("4.05")
        assert path.object_id is not None and path.instance_id is not None
        self.instances.discard((path.object_id, path.instance_id))
        self.values = {k: v for k, v in self.values.items() if not path.is_prefix_of(k)}
        self.attributes = {k: v for k, v in self.attributes.items() if not path.is_prefix_of(k)}
        return ClientResponse("2.02")

    def write_attributes(self, path: Lwm2mPath, query: Sequence[str]) -> ClientResponse:
        """Stored per path (and shown by Discover); a bare name removes an attribute. Not
        acted on: notifications follow the simulator's own schedule."""
        if path.level == 0:
            return ClientResponse("4.05")
        attrs = dict(self.attributes.get(path, {}))
        for part in query:
            name, eq, value = part.partition("=")
            if name not in _ATTRIBUTE_NAMES:
                return ClientResponse("4.00")
            if not eq:
                attrs.pop(name, None)
                continue
            try:
                float(value)
            except ValueError:
                return ClientResponse("4.00")
            attrs[name] = value
        if attrs:
            self.attributes[path] = attrs
        else:
            self.attributes.pop(path, None)
        return ClientResponse("2.04")

    def _link(self, path: Lwm2mPath, params: tuple[tuple[str, str | None], ...] = ()) -> Link:
        extra = tuple(sorted(self.attributes.get(path, {}).items()))
        return Link(str(path), params + extra)

    # -- firmware update (object 5) ---------------------------------------------------------
    def _firmware(self, state: int, result: int | None = None) -> None:
        changed = [_FW_STATE]
        self.values[_FW_STATE] = state
        if result is not None and self.values.get(_FW_RESULT) != result:
            self.values[_FW_RESULT] = result
            changed.append(_FW_RESULT)
        self._events.append(FirmwareChanged(tuple(changed)))

    def _package_written(self, package: bytes) -> None:
        self.values[Lwm2mPath.of(5, 0, 0)] = b""
        if not package:  # an empty package resets the state machine
            self._firmware(0, 0)
            return
        self.package = package
        self._firmware(2, 0)

    def _uri_written(self, uri: str) -> None:
        if not uri:
            self._firmware(0, 0)
            return
        self._firmware(1, 0)
        self._events.append(FirmwareUriWritten(uri))

    def firmware_downloaded(self, package: bytes) -> None:
        """The transport fetched the package from the Package URI."""
        self.package = package
        self._firmware(2)

    def firmware_download_failed(self, result: int = 4) -> None:
        """The fetch failed (4: connection lost, 7: invalid URI, 9: unsupported protocol)."""
        self._firmware(0, result)

    def finish_update(self) -> None:
        """The update applied (or failed with ``firmware_result``): back to Idle."""
        if self.values.get(_FW_STATE) != 3:
            return
        if self.firmware_result == 1:
            self.values[Lwm2mPath.of(3, 0, 3)] = f"pkg-{len(self.package)}"
        self._firmware(0, self.firmware_result)

    def execute(self, path: Lwm2mPath, args: bytes = b"") -> ClientResponse:
        res = self._res(path)
        if res is None or not res.executable:
            return ClientResponse("4.05")
        try:
            text = args.decode("ascii")
        except UnicodeDecodeError:
            return ClientResponse("4.00")
        self._events.append(Executed(path, text))
        p = Lwm2mPath.of
        if path == p(3, 0, 4):
            self._events.append(RebootRequested())
        elif path == p(1, 0, 8):
            self._events.append(UpdateTriggered())
        elif path == p(3, 0, 12):
            self.values = {k: v for k, v in self.values.items() if not p(3, 0, 11).is_prefix_of(k)}
            self.values[p(3, 0, 11, 0)] = 0
        elif path == p(5, 0, 2):
            if self.values.get(_FW_STATE) != 2:
                self._events.pop()  # not Executed after all
                return ClientResponse("4.05")
            self._firmware(3)
            self._events.append(FirmwareApplying())
        elif path == p(3303, 0, 5605):
            now = self.values[p(3303, 0, 5700)]
            self.values[p(3303, 0, 5601)] = now
            self.values[p(3303, 0, 5602)] = now
        return ClientResponse("2.04")

    def discover(self, path: Lwm2mPath) -> ClientResponse:
        if path.level == 0 or path.level > 3:
            return ClientResponse("4.05")
        links: list[Link] = []
        for o, i in sorted(self.instances):
            inst = Lwm2mPath.of(o, i)
            if path.level == 1 and path.object_id == o:
                if not links:
                    links.append(self._link(path, (("ver", "1.1"),) if o == 3303 else ()))
                links.append(self._link(inst))
            elif path == inst:
                links.append(self._link(inst))
            if not (path.is_prefix_of(inst) or inst.is_prefix_of(path)):
                continue
            obj = DEFAULT_MODEL.object(o)
            assert obj is not None
            for rid, res in sorted(obj.resources.items()):
                rp = inst.child(rid)
                if not path.is_prefix_of(rp) or not self._exists(rp):
                    continue
                if res.multiple:
                    n = sum(1 for k in self.values if rp.is_prefix_of(k))
                    links.append(self._link(rp, (("dim", str(n)),)))
                else:
                    links.append(self._link(rp))
        return ClientResponse("2.05", CF_LINK_FORMAT, serialize_links(links).encode())


__all__ = [
    "LWM2M_RT",
    "ClientEvent",
    "ClientResponse",
    "Executed",
    "FirmwareApplying",
    "FirmwareChanged",
    "FirmwareUriWritten",
    "LifetimeChanged",
    "RebootRequested",
    "SimulatedClient",
    "UpdateTriggered",
]
