"""The LwM2M registration interface (Register / Update / De-register) as pure decisions.

No sockets, no Redis, no clock of its own. The CoAP glue does, per request on the
device site::

    req = parse_request(method, uri_path, uri_query, content_format, payload)
    current = <the stored registration: by req.registration_id for Update/De-register,
               by the peer's device for Register (it is replaced)>
    outcome = registrar.handle(req, peer, current, now=now)
    <store outcome.save / delete outcome.delete>, reply outcome.reply

Every refusal is an ``IngressError`` carrying its CoAP code: malformed query or
object list -> 4.00, endpoint not the credential's device -> 4.03, unknown or
expired registration id -> 4.04, unsupported LwM2M version -> 4.12, NoSec not
enabled -> 4.01. A refusal changes nothing.

LwM2M 1.2 clients are registered as 1.1-compatible (``version`` "1.2" is kept): their
Register has the 1.1 parameters and this server speaks only 1.1 operations to them, with
an explicit Accept, so the 1.2 additions are never asked for. Refusing them with 4.12
would only cost each registration a round trip (the client falls back to 1.1).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from corem_ingress.core.errors import (
    FailedPrecondition,
    IngressError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.lwm2m.linkformat import CF_LINK_FORMAT, ObjectList, parse_object_list

RD = "rd"
SUPPORTED_VERSIONS = ("1.0", "1.1", "1.2")
DEFAULT_LIFETIME_S = 86400
MAX_QUERY_PARAMS = 8
_REG_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SMS_RE = re.compile(r"[0-9+]{1,20}")
_BINDINGS_10 = frozenset({"U", "UQ", "S", "SQ", "US", "UQS"})
_BINDING_11_LETTERS = "UMHTSNQ"


class MethodNotAllowed(IngressError):
    """A known /rd path with the wrong CoAP method."""

    code = "METHOD_NOT_ALLOWED"
    http_status = 405
    coap_code = "4.05"
    cli_exit = 2


class EndpointBinding(StrEnum):
    """What an endpoint name must equal for the device the DTLS credential resolved to."""

    HARDWARE_ID = "hardware_id"
    DEVICE_ID = "device_id"


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    #: The endpoint name must be the device's hardware_id (default) or its device_id.
    endpoint_binding: EndpointBinding = EndpointBinding.HARDWARE_ID
    #: Accept registrations over a session with no credential (dev configs only).
    allow_nosec: bool = False
    min_lifetime_s: int = 1
    max_lifetime_s: int = 2**32 - 1
    #: Extra seconds a registration lives in storage past its lifetime (``Lwm2mStore`` grace).
    expiry_grace_s: int = 30

    def __post_init__(self) -> None:
        if not 1 <= self.min_lifetime_s <= self.max_lifetime_s:
            raise InvalidArgument("lwm2m lifetimes: need 1 <= min_lifetime_s <= max_lifetime_s")
        if self.expiry_grace_s < 0:
            raise InvalidArgument("lwm2m expiry_grace_s must be >= 0")


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of the DTLS session, as resolved from its credential.

    ``identity`` and ``hardware_id`` come from the resolver and the device record, never
    from the device's word. For a NoSec session the glue resolves the endpoint name to a
    device in the configured dev tenant and passes ``secure=False``.
    """

    identity: DeviceIdentity
    hardware_id: str
    node_id: str
    session_id: str
    secure: bool = True


# -- requests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    endpoint: str | None
    lifetime_s: int
    version: str
    binding: str
    queue_mode: bool
    sms: str | None
    objects: ObjectList


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    registration_id: str
    lifetime_s: int | None = None
    binding: str | None = None
    sms: str | None = None
    queue_mode: bool | None = None
    objects: ObjectList | None = None


@dataclass(frozen=True, slots=True)
class DeregisterRequest:
    registration_id: str


Request = RegisterRequest | UpdateRequest | DeregisterRequest


def _query(uri_query: Sequence[str]) -> dict[str, str | None]:
    if len(uri_query) > MAX_QUERY_PARAMS:
        raise InvalidArgument("too many query parameters")
    out: dict[str, str | None] = {}
    for item in uri_query:
        name, eq, value = item.partition("=")
        if not name:
            raise InvalidArgument("empty query parameter name")
        if name in out:
            raise InvalidArgument(f"query parameter {name[:16]!r} repeated")
        out[name] = value if eq else None
    return out


def _known(params: dict[str, str | None], allowed: frozenset[str]) -> None:
    for name in params:
        if name not in allowed:
            raise InvalidArgument(f"unknown query parameter {name[:16]!r}")


def _value(params: dict[str, str | None], name: str) -> str | None:
    if name not in params:
        return None
    value = params[name]
    if not value:
        raise InvalidArgument(f"query parameter {name!r} needs a value")
    return value


def _lifetime(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise InvalidArgument("lt must be a positive integer number of seconds")
    lt = int(value)
    if lt < 1:
        raise InvalidArgument("lt must be a positive integer number of seconds")
    return lt


def _binding(value: str, version: str) -> tuple[str, bool]:
    """(binding, queue mode implied by a 1.0 binding)."""
    if version == "1.0":
        if value not in _BINDINGS_10:
            raise InvalidArgument("b must be one of U, UQ, S, SQ, US, UQS for LwM2M 1.0")
        return value, "Q" in value
    if (
        not value
        or len(set(value)) != len(value)
        or any(c not in _BINDING_11_LETTERS for c in value)
    ):
        raise InvalidArgument("b must be letters of U, M, H, T, S, N, each at most once")
    # 1.1 has a separate Q parameter; a 1.0-style "UQ" from a 1.1 client still means queue mode.
    return value, "Q" in value


def _sms(value: str | None) -> str | None:
    if value is not None and not _SMS_RE.fullmatch(value):
        raise InvalidArgument("sms must be an MSISDN (digits)")
    return value


def _objects(content_format: int | None, payload: bytes) -> ObjectList:
    if content_format not in (None, CF_LINK_FORMAT):
        raise InvalidArgument("the object list must be application/link-format (40)")
    return parse_object_list(payload)


def _registration_id(segment: str) -> str:
    if not _REG_ID_RE.fullmatch(segment):
        raise NotFound("no such registration")
    return segment


_REGISTER_PARAMS = frozenset({"ep", "lt", "lwm2m", "b", "sms", "Q"})
_UPDATE_PARAMS = frozenset({"lt", "b", "sms", "Q"})


def parse_register(
    uri_query: Sequence[str], content_format: int | None, payload: bytes
) -> RegisterRequest:
    params = _query(uri_query)
    _known(params, _REGISTER_PARAMS)
    version = _value(params, "lwm2m") or "1.0"
    if version not in SUPPORTED_VERSIONS:
        raise FailedPrecondition("LwM2M version not supported (1.0, 1.1 and 1.2 are)")
    endpoint = _value(params, "ep")
    if endpoint is not None and len(endpoint) > 128:
        raise InvalidArgument("ep is too long")
    if endpoint is None and version == "1.0":
        raise InvalidArgument("ep is required")
    if "Q" in params:
        if version == "1.0":
            raise InvalidArgument("Q is a LwM2M 1.1 parameter")
        if params["Q"] is not None:
            raise InvalidArgument("Q takes no value")
    binding, queue10 = _binding(_value(params, "b") or "U", version)
    if not payload:
        raise InvalidArgument("Register needs the object list as payload")
    lifetime = _lifetime(_value(params, "lt"))
    return RegisterRequest(
        endpoint=endpoint,
        lifetime_s=DEFAULT_LIFETIME_S if lifetime is None else lifetime,
        version=version,
        binding=binding,
        queue_mode=queue10 or "Q" in params,
        sms=_sms(_value(params, "sms")),
        objects=_objects(content_format, payload),
    )


def parse_update(
    registration_id: str, uri_query: Sequence[str], content_format: int | None, payload: bytes
) -> UpdateRequest:
    reg_id = _registration_id(registration_id)
    params = _query(uri_query)
    _known(params, _UPDATE_PARAMS)
    b = _value(params, "b")
    if "Q" in params and params["Q"] is not None:
        raise InvalidArgument("Q takes no value")
    if b is not None and not b.isalpha():
        raise InvalidArgument("b must be binding letters")
    return UpdateRequest(
        registration_id=reg_id,
        lifetime_s=_lifetime(_value(params, "lt")),
        binding=b,  # checked against the registration's version in Registrar.handle
        sms=_sms(_value(params, "sms")),
        queue_mode=True if "Q" in params else None,
        objects=_objects(content_format, payload) if payload else None,
    )


def parse_request(
    method: str,
    uri_path: Sequence[str],
    uri_query: Sequence[str],
    content_format: int | None,
    payload: bytes,
) -> Request:
    """Route a CoAP request under /rd. ``method`` is "POST", "DELETE", ... (upper case)."""
    path = tuple(uri_path)
    if not path or path[0] != RD or len(path) > 2:
        raise NotFound("no such resource")
    if len(path) == 1:
        if method != "POST":
            raise MethodNotAllowed("Register is POST /rd")
        return parse_register(uri_query, content_format, payload)
    if method == "POST":
        return parse_update(path[1], uri_query, content_format, payload)
    if method == "DELETE":
        if uri_query or payload:
            raise InvalidArgument("De-register takes no query and no payload")
        return DeregisterRequest(_registration_id(path[1]))
    raise MethodNotAllowed("Update is POST /rd/{id}, De-register is DELETE /rd/{id}")


# -- state --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registration:
    registration_id: str
    endpoint: str
    tenant_id: str
    device_id: str
    credential_id: str
    #: "psk", "x509" or "nosec".
    security: str
    version: str
    lifetime_s: int
    binding: str
    queue_mode: bool
    sms: str | None
    objects: ObjectList
    #: The broker node and DTLS session that hold the device (server-initiated requests go there).
    node_id: str
    session_id: str
    registered_at: float
    #: Last Register or Update: the lifetime counts from here.
    updated_at: float
    #: Whether the DTLS session the registration is bound to is still open (it sent the
    #: Register or the last Update). False once it ended: requests cannot reach the device
    #: until it sends an Update (or registers) over a new session.
    reachable: bool = True

    @property
    def expires_at(self) -> float:
        return self.updated_at + self.lifetime_s

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    @property
    def location_path(self) -> tuple[str, str]:
        return (RD, self.registration_id)

    def to_json(self) -> dict[str, object]:
        """The admin API's view (``GET /api/v1/devices/{device_id}/lwm2m``) and the stored form."""
        return {
            "registration_id": self.registration_id,
            "endpoint": self.endpoint,
            "tenant_id": self.tenant_id,
            "device_id": self.device_id,
            "credential_id": self.credential_id,
            "security": self.security,
            "version": self.version,
            "lifetime_s": self.lifetime_s,
            "binding": self.binding,
            "queue_mode": self.queue_mode,
            "sms": self.sms,
            "objects": self.objects.to_json(),
            "node_id": self.node_id,
            "session_id": self.session_id,
            "registered_at": self.registered_at,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
            "reachable": self.reachable,
        }

    @classmethod
    def from_json(cls, data: object) -> Registration:
        try:
            if not isinstance(data, dict):
                raise TypeError("not an object")
            sms = data.get("sms")
            return cls(
                registration_id=str(data["registration_id"]),
                endpoint=str(data["endpoint"]),
                tenant_id=str(data["tenant_id"]),
                device_id=str(data["device_id"]),
                credential_id=str(data["credential_id"]),
                security=str(data["security"]),
                version=str(data["version"]),
                lifetime_s=int(data["lifetime_s"]),
                binding=str(data["binding"]),
                queue_mode=bool(data["queue_mode"]),
                sms=None if sms is None else str(sms),
                objects=ObjectList.from_json(data["objects"]),
                node_id=str(data["node_id"]),
                session_id=str(data["session_id"]),
                registered_at=float(data["registered_at"]),
                updated_at=float(data["updated_at"]),
                reachable=bool(data.get("reachable", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument("malformed stored registration", reason=repr(exc)) from None


# -- outcomes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """The CoAP response to send: code ("2.01", ...) and Location-Path segments."""

    code: str
    location_path: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Registered:
    registration: Registration
    #: The device's previous registration, replaced by this one (its observations are void).
    replaced: Registration | None


@dataclass(frozen=True, slots=True)
class Updated:
    registration: Registration
    previous: Registration

    @property
    def objects_changed(self) -> bool:
        return self.registration.objects != self.previous.objects


@dataclass(frozen=True, slots=True)
class Deregistered:
    registration: Registration


Event = Registered | Updated | Deregistered


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: Reply
    event: Event
    #: Write this registration (Register, Update).
    save: Registration | None
    #: Delete this registration (De-register, or the one a Register replaced).
    delete: Registration | None


def new_registration_id() -> str:
    return secrets.token_urlsafe(9)


class Registrar:
    """Applies a parsed request to the current registration; raises on any refusal."""

    def __init__(
        self,
        config: RegistrationConfig | None = None,
        *,
        new_id: Callable[[], str] = new_registration_id,
    ) -> None:
        self.config = config or RegistrationConfig()
        self._new_id = new_id

    def bound_name(self, peer: Peer) -> str:
        """The endpoint name the peer's credential entitles it to."""
        if self.config.endpoint_binding is EndpointBinding.DEVICE_ID:
            return peer.identity.device_id
        return peer.hardware_id

    def check_peer(self, peer: Peer) -> None:
        if not peer.secure and not self.config.allow_nosec:
            raise Unauthenticated("LwM2M without security is not enabled", reason="nosec")

    def check_endpoint(self, endpoint: str, peer: Peer) -> None:
        if endpoint != self.bound_name(peer):
            raise PermissionDenied(
                "endpoint name does not belong to this credential",
                reason=f"endpoint bound by {self.config.endpoint_binding.value}",
            )

    def _lifetime(self, lt: int) -> int:
        if not self.config.min_lifetime_s <= lt <= self.config.max_lifetime_s:
            raise InvalidArgument(
                f"lt must be between {self.config.min_lifetime_s} and {self.config.max_lifetime_s}"
            )
        return lt

    def _security(self, peer: Peer) -> str:
        if not peer.secure:
            return "nosec"
        if peer.identity.credential_kind is CredentialKind.API_KEY:
            raise PermissionDenied("LwM2M needs a PSK or certificate credential")
        return peer.identity.credential_kind.value

    def handle(
        self, request: Request, peer: Peer, current: Registration | None, *, now: float
    ) -> Outcome:
        """``current``: for Register, the device's existing registration (or None);
        otherwise the stored registration named by ``request.registration_id`` (or None)."""
        self.check_peer(peer)
        if isinstance(request, RegisterRequest):
            return self.register(request, peer, current, now=now)
        if isinstance(request, UpdateRequest):
            return self.update(request, peer, current, now=now)
        return self.deregister(request, peer, current, now=now)

    def register(
        self, req: RegisterRequest, peer: Peer, existing: Registration | None, *, now: float
    ) -> Outcome:
        self.check_peer(peer)
        security = self._security(peer)
        endpoint = req.endpoint if req.endpoint is not None else self.bound_name(peer)
        self.check_endpoint(endpoint, peer)
        reg = Registration(
            registration_id=self._new_id(),
            endpoint=endpoint,
            tenant_id=peer.identity.tenant_id,
            device_id=peer.identity.device_id,
            credential_id=peer.identity.credential_id,
            security=security,
            version=req.version,
            lifetime_s=self._lifetime(req.lifetime_s),
            binding=req.binding,
            queue_mode=req.queue_mode,
            sms=req.sms,
            objects=req.objects,
            node_id=peer.node_id,
            session_id=peer.session_id,
            registered_at=now,
            updated_at=now,
        )
        if existing is not None and existing.device_id != reg.device_id:
            existing = None  # not ours to replace: the glue passed the wrong record
        return Outcome(Reply("2.01", reg.location_path), Registered(reg, existing), reg, existing)

    def _owned(
        self, reg_id: str, peer: Peer, current: Registration | None, now: float
    ) -> Registration:
        if current is None or current.registration_id != reg_id or current.expired(now):
            raise NotFound("no such registration")
        if (
            current.device_id != peer.identity.device_id
            or current.tenant_id != peer.identity.tenant_id
        ):
            # Someone else's registration: indistinguishable from an unknown id.
            raise NotFound("no such registration", reason="registration of another device")
        return current

    def update(
        self, req: UpdateRequest, peer: Peer, current: Registration | None, *, now: float
    ) -> Outcome:
        self.check_peer(peer)
        reg = self._owned(req.registration_id, peer, current, now)
        changes: dict[str, object] = {
            "updated_at": now,
            "node_id": peer.node_id,
            "session_id": peer.session_id,
            "credential_id": peer.identity.credential_id,
            "reachable": True,
        }
        if req.lifetime_s is not None:
            changes["lifetime_s"] = self._lifetime(req.lifetime_s)
        if req.binding is not None:
            binding, queue10 = _binding(req.binding, reg.version)
            changes["binding"] = binding
            changes["queue_mode"] = queue10
        if req.queue_mode is not None:
            if reg.version == "1.0":
                raise InvalidArgument("Q is a LwM2M 1.1 parameter")
            changes["queue_mode"] = req.queue_mode
        if req.sms is not None:
            changes["sms"] = req.sms
        if req.objects is not None:
            changes["objects"] = req.objects
        new = replace(reg, **changes)  # type: ignore[arg-type]
        return Outcome(Reply("2.04"), Updated(new, reg), new, None)

    def deregister(
        self, req: DeregisterRequest, peer: Peer, current: Registration | None, *, now: float
    ) -> Outcome:
        self.check_peer(peer)
        reg = self._owned(req.registration_id, peer, current, now)
        return Outcome(Reply("2.02"), Deregistered(reg), None, reg)


__all__ = [
    "DEFAULT_LIFETIME_S",
    "SUPPORTED_VERSIONS",
    "DeregisterRequest",
    "Deregistered",
    "EndpointBinding",
    "Event",
    "MethodNotAllowed",
    "Outcome",
    "Peer",
    "RegisterRequest",
    "Registered",
    "Registrar",
    "Registration",
    "RegistrationConfig",
    "Reply",
    "Request",
    "UpdateRequest",
    "Updated",
    "new_registration_id",
    "parse_register",
    "parse_request",
    "parse_update",
]
