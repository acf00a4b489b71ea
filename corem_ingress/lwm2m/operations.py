"""Device-management requests as data, and the device's answers interpreted.

The server sends these over the device's DTLS session as server-initiated CoAP
requests. Each builder validates the path and the body and returns a
``DeviceRequest`` (method, Uri-Path, Uri-Query, Content-Format, Accept, payload,
Observe) that the CoAP layer sends as is; ``interpret`` turns the device's
response (code, content format, payload) into a ``DeviceResult`` or raises the
matching ``IngressError``. Both travel between nodes as JSON (``to_json`` /
``from_json``) when the request is routed to the node holding the session.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from corem_ingress.core.errors import (
    DeviceFailed,
    FailedPrecondition,
    IngressError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from corem_ingress.core.uplink import JsonValue
from corem_ingress.lwm2m.content import (
    CF_CBOR,
    CF_LINK_FORMAT,
    CF_OPAQUE,
    CF_SENML_CBOR,
    CF_SENML_JSON,
    CF_TEXT,
    CF_TLV,
    DECODABLE,
    ENCODABLE,
    Record,
    decode,
    encode,
)
from corem_ingress.lwm2m.linkformat import Link, parse_links
from corem_ingress.lwm2m.model import (
    EMPTY_MODEL,
    NUMERIC_TYPES,
    Lwm2mPath,
    ObjectModel,
    ValueType,
)
from corem_ingress.lwm2m.objects import DEFAULT_MODEL
from corem_ingress.lwm2m.registration import MethodNotAllowed, Registration
from corem_ingress.lwm2m.senml import encode_senml_names


class Operation(StrEnum):
    READ = "read"
    WRITE = "write"
    EXECUTE = "execute"
    OBSERVE = "observe"
    CANCEL_OBSERVE = "cancel-observe"
    DISCOVER = "discover"
    WRITE_ATTRIBUTES = "write-attributes"
    CREATE = "create"
    DELETE = "delete"
    READ_COMPOSITE = "read-composite"
    WRITE_COMPOSITE = "write-composite"
    OBSERVE_COMPOSITE = "observe-composite"
    CANCEL_OBSERVE_COMPOSITE = "cancel-observe-composite"


#: Operations whose answer carries values.
READING = frozenset(
    {
        Operation.READ,
        Operation.OBSERVE,
        Operation.CANCEL_OBSERVE,
        Operation.READ_COMPOSITE,
        Operation.OBSERVE_COMPOSITE,
        Operation.CANCEL_OBSERVE_COMPOSITE,
    }
)
COMPOSITE = frozenset(
    {
        Operation.READ_COMPOSITE,
        Operation.WRITE_COMPOSITE,
        Operation.OBSERVE_COMPOSITE,
        Operation.CANCEL_OBSERVE_COMPOSITE,
    }
)
#: Most paths in one composite request.
MAX_COMPOSITE_PATHS = 64


_SUCCESS = {
    Operation.READ: "2.05",
    Operation.OBSERVE: "2.05",
    Operation.CANCEL_OBSERVE: "2.05",
    Operation.DISCOVER: "2.05",
    Operation.WRITE: "2.04",
    Operation.EXECUTE: "2.04",
    Operation.WRITE_ATTRIBUTES: "2.04",
    Operation.CREATE: "2.01",
    Operation.DELETE: "2.02",
    Operation.READ_COMPOSITE: "2.05",
    Operation.OBSERVE_COMPOSITE: "2.05",
    Operation.CANCEL_OBSERVE_COMPOSITE: "2.05",
    Operation.WRITE_COMPOSITE: "2.04",
}
#: The CoAP method(s) each operation is sent with (a routed request is checked against it).
_METHODS: dict[Operation, frozenset[str]] = {
    Operation.READ: frozenset({"GET"}),
    Operation.OBSERVE: frozenset({"GET"}),
    Operation.CANCEL_OBSERVE: frozenset({"GET"}),
    Operation.DISCOVER: frozenset({"GET"}),
    Operation.WRITE: frozenset({"PUT", "POST"}),
    Operation.EXECUTE: frozenset({"POST"}),
    Operation.WRITE_ATTRIBUTES: frozenset({"PUT"}),
    Operation.CREATE: frozenset({"POST"}),
    Operation.DELETE: frozenset({"DELETE"}),
    Operation.READ_COMPOSITE: frozenset({"FETCH"}),
    Operation.OBSERVE_COMPOSITE: frozenset({"FETCH"}),
    Operation.CANCEL_OBSERVE_COMPOSITE: frozenset({"FETCH"}),
    Operation.WRITE_COMPOSITE: frozenset({"iPATCH"}),
}


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """One server-initiated CoAP request, ready to send."""

    operation: Operation
    #: The LwM2M path operated on (``uri_path`` adds the client's root path, if any).
    path: Lwm2mPath
    method: str
    uri_path: tuple[str, ...]
    uri_query: tuple[str, ...] = ()
    #: Content-Format of ``payload`` (None without payload).
    content_format: int | None = None
    #: Accept option (None: let the device choose).
    accept: int | None = None
    payload: bytes = b""
    #: Observe option: 0 register, 1 deregister, None absent.
    observe: int | None = None
    #: Read-/Observe-Composite: the paths asked for (``path`` is then the root).
    paths: tuple[Lwm2mPath, ...] = ()

    @property
    def observe_key(self) -> tuple[Lwm2mPath, tuple[Lwm2mPath, ...]]:
        """What one observation is of: a path, or a composite's set of paths."""
        return (self.path, self.paths)

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "operation": self.operation.value,
            "path": str(self.path),
            "paths": [str(p) for p in self.paths],
            "method": self.method,
            "uri_path": list(self.uri_path),
            "uri_query": list(self.uri_query),
            "content_format": self.content_format,
            "accept": self.accept,
            "payload": base64.b64encode(self.payload).decode(),
            "observe": self.observe,
        }

    @classmethod
    def from_json(cls, data: object) -> DeviceRequest:
        try:
            if not isinstance(data, dict):
                raise TypeError("not an object")
            method = str(data["method"])
            if method not in _METHODS[Operation(data["operation"])]:
                raise ValueError("method")
            observe = data.get("observe")
            if observe not in (None, 0, 1):
                raise ValueError("observe")
            return cls(
                operation=Operation(data["operation"]),
                path=Lwm2mPath.parse(data["path"]),
                method=method,
                uri_path=tuple(str(s) for s in data["uri_path"]),
                uri_query=tuple(str(s) for s in data.get("uri_query", [])),
                content_format=_opt_int(data.get("content_format")),
                accept=_opt_int(data.get("accept")),
                payload=base64.b64decode(str(data.get("payload", "")), validate=True),
                observe=observe,
                paths=tuple(Lwm2mPath.parse(p) for p in data.get("paths", [])),
            )
        except (KeyError, TypeError, ValueError, binascii.Error, InvalidArgument) as exc:
            raise InvalidArgument("malformed device request", reason=repr(exc)) from None


def _opt_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError("content format")
    return value


@dataclass(frozen=True, slots=True)
class DeviceResponse:
    """The device's answer as the CoAP layer saw it."""

    code: str
    content_format: int | None = None
    payload: bytes = b""

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "code": self.code,
            "content_format": self.content_format,
            "payload": base64.b64encode(self.payload).decode(),
        }

    @classmethod
    def from_json(cls, data: object) -> DeviceResponse:
        try:
            if not isinstance(data, dict):
                raise TypeError("not an object")
            code = str(data["code"])
            if not _CODE_RE.fullmatch(code):
                raise ValueError("code")
            return cls(
                code,
                _opt_int(data.get("content_format")),
                base64.b64decode(str(data.get("payload", "")), validate=True),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise InvalidArgument("malformed device response", reason=repr(exc)) from None


_CODE_RE = re.compile(r"[245]\.[0-3][0-9]")


@dataclass(frozen=True, slots=True)
class DeviceResult:
    operation: Operation
    path: Lwm2mPath
    code: str
    #: Decoded values (Read, Observe, Cancel-Observe).
    records: tuple[Record, ...] = ()
    #: Discover's answer.
    links: tuple[Link, ...] = ()
    #: Create: the instances created.
    created: tuple[Lwm2mPath, ...] = ()

    def to_json(self, model: ObjectModel | None = None, *, root: str = "/") -> dict[str, JsonValue]:
        """The operator's view; with ``model``, Discover's links carry the ``name`` of the
        object or resource they point at (null when the model does not know it); ``root``
        is the client's root path its link targets start with."""
        out: dict[str, JsonValue] = {
            "operation": self.operation.value,
            "path": str(self.path),
            "code": self.code,
        }
        if self.operation in READING:
            out["records"] = [r.to_json() for r in self.records]
        if self.operation is Operation.DISCOVER:
            out["links"] = [_link_json(link, model, root) for link in self.links]
        if self.operation is Operation.CREATE:
            out["instances"] = [str(p) for p in self.created]
        return out


def _link_json(link: Link, model: ObjectModel | None, root: str) -> dict[str, JsonValue]:
    out: dict[str, JsonValue] = {"target": link.target, "params": {k: v for k, v in link.params}}
    if model is not None:
        prefix = "/" + "/".join(s for s in root.split("/") if s)
        target = link.target
        if prefix != "/" and target.startswith(prefix + "/"):
            target = target[len(prefix) :]
        try:
            out["name"] = model.name_of(Lwm2mPath.parse(target))
        except InvalidArgument:
            out["name"] = None
    return out


# -- building -------------------------------------------------------------------------------


def _path(path: Lwm2mPath | str) -> Lwm2mPath:
    return path if isinstance(path, Lwm2mPath) else Lwm2mPath.parse(path)


def _levels(path: Lwm2mPath, lo: int, hi: int, op: str) -> None:
    names = ["root", "object", "object instance", "resource", "resource instance"]
    if not lo <= path.level <= hi:
        allowed = ", ".join(names[lo : hi + 1])
        raise InvalidArgument(f"{op} applies to: {allowed}")


def _uri(path: Lwm2mPath, root: str) -> tuple[str, ...]:
    prefix = tuple(s for s in root.split("/") if s)
    return prefix + path.uri_path


def preferred_format(registration: Registration | None) -> int:
    """The richest format the client announced: SenML CBOR > SenML JSON > TLV (1.0: TLV).

    Used as the Write payload format and as the Accept of Read / Observe when the operator
    gives none: a client that announced ``ct=110`` and has no TLV (Wakaama's default build)
    answers 5.00 to a request without Accept (TLV is its default)."""
    if registration is None or registration.version == "1.0":
        return CF_TLV
    announced = registration.objects.content_formats
    for cf in (CF_SENML_CBOR, CF_SENML_JSON, CF_TLV):
        if cf in announced:
            return cf
    return CF_SENML_JSON if announced else CF_TLV


def check_accept(accept: int | None) -> int | None:
    """An operator's Accept must be a format we can decode: refused before the device is
    asked (LwM2M CBOR 11544, LwM2M 1.2, is not decoded)."""
    if accept is not None and accept not in DECODABLE:
        known = ", ".join(str(cf) for cf in sorted(DECODABLE))
        raise InvalidArgument(
            f"accept {accept} is not a content format this server decodes ({known})"
        )
    return accept


def read(path: Lwm2mPath | str, *, accept: int | None = None, root: str = "/") -> DeviceRequest:
    p = _path(path)
    _levels(p, 1, 4, "Read")
    return DeviceRequest(Operation.READ, p, "GET", _uri(p, root), accept=accept)


def observe(path: Lwm2mPath | str, *, accept: int | None = None, root: str = "/") -> DeviceRequest:
    p = _path(path)
    _levels(p, 1, 4, "Observe")
    return DeviceRequest(Operation.OBSERVE, p, "GET", _uri(p, root), accept=accept, observe=0)


def cancel_observe(
    path: Lwm2mPath | str, *, accept: int | None = None, root: str = "/"
) -> DeviceRequest:
    """GET with Observe=1; the CoAP layer must reuse the token of the observation."""
    p = _path(path)
    _levels(p, 1, 4, "Cancel-Observe")
    return DeviceRequest(
        Operation.CANCEL_OBSERVE, p, "GET", _uri(p, root), accept=accept, observe=1
    )


def discover(path: Lwm2mPath | str, *, root: str = "/") -> DeviceRequest:
    p = _path(path)
    _levels(p, 1, 3, "Discover")
    return DeviceRequest(Operation.DISCOVER, p, "GET", _uri(p, root), accept=CF_LINK_FORMAT)


def write(
    path: Lwm2mPath | str,
    records: Sequence[Record],
    *,
    content_format: int = CF_TLV,
    replace: bool = True,
    root: str = "/",
    model: ObjectModel = DEFAULT_MODEL,
) -> DeviceRequest:
    """Write (``replace``: PUT) or Partial Update (POST) of ``records`` under ``path``."""
    p = _path(path)
    _levels(p, 2, 4, "Write")
    if content_format not in ENCODABLE:
        raise InvalidArgument("Write payloads are TLV, SenML JSON/CBOR, text, opaque or CBOR")
    if content_format in (CF_TEXT, CF_OPAQUE, CF_CBOR) and p.level < 3:
        raise InvalidArgument("text, opaque and CBOR write a single resource")
    if not records:
        raise InvalidArgument("Write needs at least one value")
    _check_under(p, records, model, need_writable=True)
    payload = encode(records, content_format, p)
    return DeviceRequest(
        Operation.WRITE,
        p,
        "PUT" if replace else "POST",
        _uri(p, root),
        content_format=content_format,
        payload=payload,
    )


def _check_against_model(r: Record, model: ObjectModel, *, need_writable: bool) -> None:
    """A value the model knows to be wrong for its resource: not writable (Write), of
    another type, an instance of a single resource, outside the resource's range."""
    assert r.path.object_id is not None and r.path.resource_id is not None
    res = model.resource(r.path.object_id, r.path.resource_id)
    if res is None:
        return
    if need_writable and not res.writable:
        raise InvalidArgument(f"{r.path} ({res.name}) is not writable")
    if res.type is ValueType.NONE:
        raise InvalidArgument(f"{r.path} ({res.name}) is executable: it holds no value")
    if res.type is not r.type:
        raise InvalidArgument(f"{r.path} ({res.name}) takes a {res.type.value} value")
    if r.path.level == 4 and not res.multiple:
        raise InvalidArgument(f"{r.path} ({res.name}) has no resource instances")
    if (why := res.out_of_range(r.value)) is not None:
        raise InvalidArgument(f"{r.path} ({res.name}): {why}")


def _check_under(
    base: Lwm2mPath, records: Sequence[Record], model: ObjectModel, *, need_writable: bool
) -> None:
    for r in records:
        if not base.is_prefix_of(r.path):
            raise InvalidArgument(f"{r.path} lies outside {base}")
        _check_against_model(r, model, need_writable=need_writable)


def create(
    path: Lwm2mPath | str,
    records: Sequence[Record],
    *,
    content_format: int = CF_TLV,
    root: str = "/",
    model: ObjectModel = DEFAULT_MODEL,
) -> DeviceRequest:
    """Create object instance(s): POST /{object} with the new instances' resources. Each
    record names its instance (``/31024/20/1``): the new instance ids are the operator's.
    Values are checked against the model (type, range), not for W: a Create also sets
    resources the server may only read afterwards."""
    p = _path(path)
    _levels(p, 1, 1, "Create")
    if content_format not in (CF_TLV, CF_SENML_JSON, CF_SENML_CBOR):
        raise InvalidArgument("Create payloads are TLV, SenML JSON or SenML CBOR")
    if not records:
        raise InvalidArgument("Create needs at least one value")
    _check_under(p, records, model, need_writable=False)
    payload = encode(records, content_format, p)
    return DeviceRequest(
        Operation.CREATE, p, "POST", _uri(p, root), content_format=content_format, payload=payload
    )


def delete(path: Lwm2mPath | str, *, root: str = "/") -> DeviceRequest:
    """Delete an object instance: DELETE /{object}/{instance}."""
    p = _path(path)
    _levels(p, 2, 2, "Delete")
    return DeviceRequest(Operation.DELETE, p, "DELETE", _uri(p, root))


def _composite_paths(paths: Sequence[Lwm2mPath | str]) -> tuple[Lwm2mPath, ...]:
    if not paths or len(paths) > MAX_COMPOSITE_PATHS:
        raise InvalidArgument(f"a composite operation takes 1..{MAX_COMPOSITE_PATHS} paths")
    out: list[Lwm2mPath] = []
    for text in paths:
        p = _path(text)
        _levels(p, 1, 4, "a composite operation")
        if p in out:
            raise InvalidArgument(f"{p} is given twice")
        out.append(p)
    return tuple(out)


def _senml_format(fmt: int | None, what: str) -> int:
    if fmt is None:
        return CF_SENML_JSON
    if fmt not in (CF_SENML_JSON, CF_SENML_CBOR):
        raise InvalidArgument(f"{what} is SenML JSON (110) or SenML CBOR (112)")
    return fmt


def _composite_read(
    operation: Operation,
    paths: Sequence[Lwm2mPath | str],
    accept: int | None,
    root: str,
    observe: int | None,
) -> DeviceRequest:
    ps = _composite_paths(paths)
    cf = _senml_format(accept, "the answer of a composite operation")
    return DeviceRequest(
        operation,
        Lwm2mPath(),
        "FETCH",
        _uri(Lwm2mPath(), root),
        content_format=cf,
        accept=cf,
        payload=encode_senml_names(ps, cbor=cf == CF_SENML_CBOR),
        observe=observe,
        paths=ps,
    )


def read_composite(
    paths: Sequence[Lwm2mPath | str], *, accept: int | None = None, root: str = "/"
) -> DeviceRequest:
    """Read-Composite (LwM2M 1.1): FETCH on the root with the paths as SenML names; the
    answer is SenML of every value under them. The request's body is in the answer's
    format (SenML JSON or CBOR)."""
    return _composite_read(Operation.READ_COMPOSITE, paths, accept, root, None)


def observe_composite(
    paths: Sequence[Lwm2mPath | str], *, accept: int | None = None, root: str = "/"
) -> DeviceRequest:
    """Observe-Composite: Read-Composite with Observe 0; each notification holds them all."""
    return _composite_read(Operation.OBSERVE_COMPOSITE, paths, accept, root, 0)


def cancel_observe_composite(
    paths: Sequence[Lwm2mPath | str], *, accept: int | None = None, root: str = "/"
) -> DeviceRequest:
    """Observe 1 with the same paths; the CoAP layer reuses the observation's token."""
    return _composite_read(Operation.CANCEL_OBSERVE_COMPOSITE, paths, accept, root, 1)


def write_composite(
    records: Sequence[Record],
    *,
    content_format: int | None = None,
    root: str = "/",
    model: ObjectModel = DEFAULT_MODEL,
) -> DeviceRequest:
    """Write-Composite: iPATCH on the root with SenML of values anywhere on the device,
    each checked against the model as a Write."""
    cf = _senml_format(content_format, "a Write-Composite payload")
    if not records:
        raise InvalidArgument("Write-Composite needs at least one value")
    for r in records:
        _check_against_model(r, model, need_writable=True)
    return DeviceRequest(
        Operation.WRITE_COMPOSITE,
        Lwm2mPath(),
        "iPATCH",
        _uri(Lwm2mPath(), root),
        content_format=cf,
        payload=encode(records, cf, Lwm2mPath()),
        paths=tuple(r.path for r in records),
    )


def as_read(request: DeviceRequest) -> DeviceRequest:
    """The Read of what an Observe (or its Cancel) is of, for an answer without touching
    the observation (an owner joining or leaving a shared one)."""
    read_op = Operation.READ_COMPOSITE if request.operation in COMPOSITE else Operation.READ
    return dataclasses.replace(request, operation=read_op, observe=None)


_EXEC_ARGS_RE = re.compile(
    r"[0-9](='[\x21\x23-\x26\x28-\x5b\x5d-\x7e]*')?(,[0-9](='[\x21\x23-\x26\x28-\x5b\x5d-\x7e]*')?)*"
)


def execute(
    path: Lwm2mPath | str,
    args: str = "",
    *,
    root: str = "/",
    model: ObjectModel = DEFAULT_MODEL,
) -> DeviceRequest:
    """Execute a resource; ``args`` as in LwM2M 1.1 (``0='x',1``), sent as text."""
    p = _path(path)
    _levels(p, 3, 3, "Execute")
    assert p.object_id is not None and p.resource_id is not None
    res = model.resource(p.object_id, p.resource_id)
    if res is not None and not res.executable:
        raise InvalidArgument(f"{p} ({res.name}) is not executable")
    if args and (len(args) > 1024 or not _EXEC_ARGS_RE.fullmatch(args)):
        raise InvalidArgument("execute arguments look like 0='value',1")
    return DeviceRequest(
        Operation.EXECUTE,
        p,
        "POST",
        _uri(p, root),
        content_format=CF_TEXT if args else None,
        payload=args.encode(),
    )


_ATTRIBUTES = ("pmin", "pmax", "gt", "lt", "st", "epmin", "epmax")


def _attr_number(name: str, value: float | int) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number")
    if name in ("pmin", "pmax", "epmin", "epmax"):
        if not isinstance(value, int) and not float(value).is_integer():
            raise InvalidArgument(f"{name} is a whole number of seconds")
        if value < 0:
            raise InvalidArgument(f"{name} must be >= 0")
        return str(int(value))
    if name == "st" and value < 0:
        raise InvalidArgument("st must be >= 0")
    return repr(float(value)) if isinstance(value, float) else str(value)


def write_attributes(
    path: Lwm2mPath | str,
    *,
    pmin: int | None = None,
    pmax: int | None = None,
    gt: float | None = None,
    lt: float | None = None,
    st: float | None = None,
    epmin: int | None = None,
    epmax: int | None = None,
    clear: Sequence[str] = (),
    root: str = "/",
    model: ObjectModel = DEFAULT_MODEL,
) -> DeviceRequest:
    """Write-Attributes (PUT with the attributes as query); ``clear`` removes attributes."""
    p = _path(path)
    _levels(p, 1, 4, "Write-Attributes")
    values: dict[str, float | int] = {
        k: v
        for k, v in {
            "pmin": pmin, "pmax": pmax, "gt": gt, "lt": lt, "st": st,
            "epmin": epmin, "epmax": epmax,
        }.items()
        if v is not None
    }  # fmt: skip
    for name in clear:
        if name not in _ATTRIBUTES:
            raise InvalidArgument(f"unknown attribute {name[:16]!r}")
        if name in values:
            raise InvalidArgument(f"{name} is both set and cleared")
    if not values and not clear:
        raise InvalidArgument("Write-Attributes needs at least one attribute")
    query = [f"{k}={_attr_number(k, v)}" for k, v in values.items()]
    if "pmin" in values and "pmax" in values and values["pmin"] > values["pmax"]:
        raise InvalidArgument("pmin must not exceed pmax")
    if "epmin" in values and "epmax" in values and values["epmin"] > values["epmax"]:
        raise InvalidArgument("epmin must not exceed epmax")
    if {"gt", "lt", "st"} & set(values):
        if p.level < 3:
            raise InvalidArgument("gt, lt and st apply to a resource")
        assert p.object_id is not None and p.resource_id is not None
        vtype = model.resource_type(p.object_id, p.resource_id)
        if vtype is not None and vtype not in NUMERIC_TYPES:
            raise InvalidArgument("gt, lt and st apply to a numeric resource")
    if "lt" in values and "gt" in values:
        step = values.get("st", 0)
        if not values["lt"] + 2 * step < values["gt"]:
            raise InvalidArgument("need lt + 2*st < gt")
    query += list(clear)
    return DeviceRequest(
        Operation.WRITE_ATTRIBUTES, p, "PUT", _uri(p, root), uri_query=tuple(query)
    )


ATTRIBUTES = _ATTRIBUTES
_INTEGER_ATTRIBUTES = frozenset({"pmin", "pmax", "epmin", "epmax"})


def attributes_from(params: Mapping[str, object]) -> dict[str, float | int]:
    """The attributes among an operator's parameters (JSON numbers), by name."""
    out: dict[str, float | int] = {}
    for name in _ATTRIBUTES:
        value = params.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgument(f"{name} must be a number")
        if name in _INTEGER_ATTRIBUTES and isinstance(value, float):
            if not value.is_integer():
                raise InvalidArgument(f"{name} is a whole number of seconds")
            value = int(value)
        out[name] = value
    return out


@dataclass(frozen=True, slots=True)
class AttributeSpec:
    """Configured default attributes: ``/3303/0/5700?pmin=5&pmax=30&st=0.5``."""

    path: Lwm2mPath
    attributes: dict[str, float | int]

    @classmethod
    def parse(cls, text: str) -> AttributeSpec:
        path_text, sep, query = text.strip().partition("?")
        if not sep or not query:
            raise InvalidArgument(f"{text[:64]!r} is not PATH?attr=value&... (e.g. /3/0?pmax=60)")
        path = Lwm2mPath.parse(path_text)
        values: dict[str, float | int] = {}
        for part in query.split("&"):
            name, eq, value = part.partition("=")
            if name not in _ATTRIBUTES or not eq:
                raise InvalidArgument(f"{part[:24]!r}: attributes are {', '.join(_ATTRIBUTES)}")
            if name in values:
                raise InvalidArgument(f"{name} is given twice")
            try:
                integral = name in _INTEGER_ATTRIBUTES or re.fullmatch(r"-?[0-9]{1,18}", value)
                number: float | int = int(value) if integral else float(value)
            except ValueError:
                raise InvalidArgument(f"{name}={value[:16]!r} is not a number") from None
            values[name] = number
        spec = cls(path, values)
        spec.request()  # validated as Write-Attributes would be
        return spec

    def request(self, *, root: str = "/", model: ObjectModel = DEFAULT_MODEL) -> DeviceRequest:
        return write_attributes(self.path, **self.attributes, root=root, model=model)  # type: ignore[arg-type]


# -- interpreting ---------------------------------------------------------------------------

_ERRORS: dict[str, tuple[type[IngressError], str]] = {
    "4.00": (InvalidArgument, "the device rejected the request as malformed"),
    "4.01": (PermissionDenied, "the device refused the server access"),
    "4.02": (InvalidArgument, "the device rejected an option"),
    "4.03": (PermissionDenied, "the device refused the operation"),
    "4.04": (NotFound, "the device has no such object, instance or resource"),
    "4.05": (MethodNotAllowed, "the operation is not allowed on this path"),
    "4.06": (InvalidArgument, "the device cannot answer in the requested format"),
    "4.08": (InvalidArgument, "the device got an incomplete request"),
    "4.12": (FailedPrecondition, "the device's precondition failed"),
    "4.13": (InvalidArgument, "the request is too large for the device"),
    "4.15": (InvalidArgument, "the device does not support this content format"),
}


def error_for(code: str) -> IngressError:
    """The error an operator gets for a device's non-success CoAP code: the matching 4xx,
    or ``DeviceFailed`` (HTTP 502, ``coap_code`` in the body) for a 5.xx or any other code:
    the device's failure is not the broker's (503 would say "retry")."""
    known = _ERRORS.get(code)
    if known is None:
        return DeviceFailed(
            f"the device failed to answer the request ({code})",
            device_code=code,
            reason=f"device answered {code}",
        )
    cls, message = known
    return cls(f"{message} ({code})", reason=f"device answered {code}")


def timeout_error() -> Unavailable:
    return Unavailable("the device did not answer in time", reason="timeout")


def interpret(
    request: DeviceRequest,
    response: DeviceResponse,
    *,
    now: float,
    model: ObjectModel = DEFAULT_MODEL,
) -> DeviceResult:
    """A success result, or the error to give the operator (a malformed body: 4.00-like)."""
    expected = _SUCCESS[request.operation]
    if response.code != expected:
        if response.code.startswith("2."):
            raise DeviceFailed(
                f"the device answered {response.code}, expected {expected}",
                device_code=response.code,
                reason="unexpected success code",
            )
        raise error_for(response.code)
    if request.operation is Operation.DISCOVER:
        if response.content_format not in (None, CF_LINK_FORMAT):
            raise InvalidArgument("Discover answer is not link format")
        return DeviceResult(request.operation, request.path, response.code,
                            links=parse_links(response.payload))  # fmt: skip
    if request.operation in READING:
        records = decode(
            response.payload, response.content_format, request.path, now=now, model=model
        )
        if request.paths:
            for r in records:
                if not any(p.is_prefix_of(r.path) for p in request.paths):
                    raise InvalidArgument(f"malformed payload: {r.path} was not asked for")
        return DeviceResult(request.operation, request.path, response.code, tuple(records))
    if request.operation is Operation.CREATE:
        return DeviceResult(
            request.operation, request.path, response.code, created=created_instances(request)
        )
    return DeviceResult(request.operation, request.path, response.code)


def created_instances(request: DeviceRequest) -> tuple[Lwm2mPath, ...]:
    """The instances a Create request creates (its payload names them)."""
    records = decode(
        request.payload, request.content_format, request.path, now=0.0, model=EMPTY_MODEL
    )
    return tuple(sorted({Lwm2mPath(r.path.ids[:2]) for r in records}))


def notification_records(
    request: DeviceRequest,
    response: DeviceResponse,
    *,
    now: float,
    model: ObjectModel = DEFAULT_MODEL,
) -> list[Record]:
    """The values of one Observe notification (2.05 with the observation's token)."""
    return list(interpret(request, response, now=now, model=model).records)


__all__ = [
    "ATTRIBUTES",
    "COMPOSITE",
    "MAX_COMPOSITE_PATHS",
    "READING",
    "AttributeSpec",
    "DeviceRequest",
    "DeviceResponse",
    "DeviceResult",
    "Operation",
    "as_read",
    "attributes_from",
    "cancel_observe",
    "cancel_observe_composite",
    "check_accept",
    "create",
    "created_instances",
    "delete",
    "discover",
    "error_for",
    "execute",
    "interpret",
    "notification_records",
    "observe",
    "observe_composite",
    "preferred_format",
    "read",
    "read_composite",
    "timeout_error",
    "write",
    "write_attributes",
    "write_composite",
]
