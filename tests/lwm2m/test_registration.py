"""The registration interface as pure decisions: parse, authorize, apply; no I/O, time passed in."""

from collections.abc import Iterator
from itertools import count

import pytest

from corem_ingress.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.lwm2m.registration import (
    DEFAULT_LIFETIME_S,
    Deregistered,
    DeregisterRequest,
    EndpointBinding,
    MethodNotAllowed,
    Peer,
    Registered,
    RegisterRequest,
    Registrar,
    Registration,
    RegistrationConfig,
    Updated,
    UpdateRequest,
    parse_request,
)

pytestmark = pytest.mark.unit

DEV = "0b7c6f62-3f0e-4c39-9a55-6a1f0f1b2c3d"
OTHER = "5d3c2b1a-0000-4000-8000-000000000001"
HW = "SN-0001"
OBJECTS = b'</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</3303/0>;ver=1.1'
NOW = 1_700_000_000.0


def peer(
    device_id: str = DEV,
    hardware_id: str = HW,
    kind: CredentialKind = CredentialKind.PSK,
    *,
    secure: bool = True,
    node: str = "node-a",
) -> Peer:
    ident = DeviceIdentity("acme", device_id, kind, "psk_00112233445566aa")
    return Peer(ident, hardware_id, node, "sess-1", secure=secure)


def ids() -> Iterator[str]:
    return (f"r{i}" for i in count(1))


@pytest.fixture
def registrar() -> Registrar:
    gen = ids()
    return Registrar(new_id=lambda: next(gen))


def register_req(*query: str, payload: bytes = OBJECTS, cf: int | None = 40) -> RegisterRequest:
    req = parse_request("POST", ["rd"], list(query), cf, payload)
    assert isinstance(req, RegisterRequest)
    return req


def registered(registrar: Registrar, *query: str, p: Peer | None = None) -> Registration:
    q = query or (f"ep={HW}", "lt=300", "lwm2m=1.1", "b=U")
    out = registrar.handle(register_req(*q), p or peer(), None, now=NOW)
    assert out.save is not None
    return out.save


# -- Register -------------------------------------------------------------------------------


def test_register_parses_the_query_and_object_list() -> None:
    req = register_req(f"ep={HW}", "lt=300", "lwm2m=1.1", "b=UQ", "sms=4912345", "Q")
    assert req.endpoint == HW and req.lifetime_s == 300 and req.version == "1.1"
    assert req.binding == "UQ" and req.queue_mode and req.sms == "4912345"
    assert req.objects.object_ids() == [1, 3, 3303]


def test_register_defaults_are_lwm2m_10_u_one_day() -> None:
    req = register_req(f"ep={HW}", cf=None)
    assert (req.version, req.binding, req.lifetime_s) == ("1.0", "U", DEFAULT_LIFETIME_S)
    assert not req.queue_mode


def test_lwm2m_10_queue_binding() -> None:
    assert register_req(f"ep={HW}", "lwm2m=1.0", "b=UQ").queue_mode


def test_register_creates_and_replies_location(registrar: Registrar) -> None:
    out = registrar.handle(register_req(f"ep={HW}", "lt=300", "lwm2m=1.1"), peer(), None, now=NOW)
    assert out.reply.code == "2.01"
    assert out.reply.location_path == ("rd", "r1")
    reg = out.save
    assert reg is not None and out.delete is None
    assert isinstance(out.event, Registered) and out.event.replaced is None
    assert (reg.endpoint, reg.tenant_id, reg.device_id) == (HW, "acme", DEV)
    assert (reg.node_id, reg.session_id, reg.security) == ("node-a", "sess-1", "psk")
    assert reg.registered_at == reg.updated_at == NOW and reg.expires_at == NOW + 300
    assert Registration.from_json(reg.to_json()) == reg


def test_register_again_replaces_the_previous_registration(registrar: Registrar) -> None:
    first = registered(registrar)
    out = registrar.handle(register_req(f"ep={HW}", "lwm2m=1.1"), peer(), first, now=NOW + 5)
    assert out.save is not None and out.save.registration_id == "r2"
    assert out.delete == first
    assert isinstance(out.event, Registered) and out.event.replaced == first


def test_lwm2m_11_endpoint_defaults_to_the_credentials_name(registrar: Registrar) -> None:
    reg = registered(registrar, "lwm2m=1.1")
    assert reg.endpoint == HW
    with pytest.raises(InvalidArgument, match="ep is required"):
        register_req("lwm2m=1.0")


def test_wrong_endpoint_for_the_credential_is_4_03(registrar: Registrar) -> None:
    with pytest.raises(PermissionDenied) as info:
        registrar.handle(register_req("ep=SN-9999"), peer(), None, now=NOW)
    assert info.value.coap_code == "4.03"
    # Another device's endpoint name, a device id in hardware_id mode: refused too.
    for ep in ("SN-0002", DEV):
        with pytest.raises(PermissionDenied):
            registrar.handle(register_req(f"ep={ep}"), peer(), None, now=NOW)


def test_device_id_binding_mode() -> None:
    r = Registrar(RegistrationConfig(endpoint_binding=EndpointBinding.DEVICE_ID))
    out = r.handle(register_req(f"ep={DEV}"), peer(), None, now=NOW)
    assert out.save is not None and out.save.endpoint == DEV
    with pytest.raises(PermissionDenied):
        r.handle(register_req(f"ep={HW}"), peer(), None, now=NOW)


def test_nosec_only_when_enabled(registrar: Registrar) -> None:
    with pytest.raises(Unauthenticated) as info:
        registrar.handle(register_req(f"ep={HW}"), peer(secure=False), None, now=NOW)
    assert info.value.coap_code == "4.01"
    dev = Registrar(RegistrationConfig(allow_nosec=True))
    out = dev.handle(register_req(f"ep={HW}"), peer(secure=False), None, now=NOW)
    assert out.save is not None and out.save.security == "nosec"
    with pytest.raises(PermissionDenied):  # the binding still applies
        dev.handle(register_req("ep=SN-2"), peer(secure=False), None, now=NOW)


def test_api_key_credentials_cannot_register(registrar: Registrar) -> None:
    with pytest.raises(PermissionDenied):
        registrar.handle(register_req(f"ep={HW}"), peer(kind=CredentialKind.API_KEY), None, now=NOW)


def test_x509_security(registrar: Registrar) -> None:
    reg = registered(registrar, f"ep={HW}", p=peer(kind=CredentialKind.X509))
    assert reg.security == "x509"


def test_malformed_link_format_is_4_00() -> None:
    with pytest.raises(InvalidArgument) as info:
        register_req(f"ep={HW}", payload=b"</1/0>,</3/0")
    assert info.value.coap_code == "4.00"
    assert "malformed link format" in info.value.message


@pytest.mark.parametrize("version", ["1.3", "2.0", "0.9"])
def test_unsupported_version_is_4_12(version: str) -> None:
    with pytest.raises(FailedPrecondition) as info:
        register_req(f"ep={HW}", f"lwm2m={version}")
    assert info.value.coap_code == "4.12"


def test_lwm2m_1_2_is_registered_as_1_1_compatible() -> None:
    """Issue 21: a 1.2-first client is accepted at once (no 4.12 round trip); its 1.1
    parameters (Q, 1.1 binding letters) apply."""
    req = register_req(f"ep={HW}", "lwm2m=1.2", "b=UT", "Q")
    assert req.version == "1.2" and req.binding == "UT" and req.queue_mode


@pytest.mark.parametrize(
    ("query", "payload", "cf"),
    [
        ((f"ep={HW}", "lt=0"), OBJECTS, 40),
        ((f"ep={HW}", "lt=-5"), OBJECTS, 40),
        ((f"ep={HW}", "lt=abc"), OBJECTS, 40),
        ((f"ep={HW}", "lt=99999999999"), OBJECTS, 40),
        ((f"ep={HW}", "b=X"), OBJECTS, 40),
        ((f"ep={HW}", "lwm2m=1.1", "b=UU"), OBJECTS, 40),
        ((f"ep={HW}", "lwm2m=1.0", "b=T"), OBJECTS, 40),
        ((f"ep={HW}", "lwm2m=1.0", "Q"), OBJECTS, 40),
        ((f"ep={HW}", "lwm2m=1.1", "Q=1"), OBJECTS, 40),
        ((f"ep={HW}", "color=red"), OBJECTS, 40),
        ((f"ep={HW}", f"ep={HW}"), OBJECTS, 40),
        ((f"ep={HW}", "sms=abc"), OBJECTS, 40),
        (("ep=",), OBJECTS, 40),
        (("ep=" + "x" * 200,), OBJECTS, 40),
        ((f"ep={HW}",), b"", 40),
        ((f"ep={HW}",), OBJECTS, 50),
        (tuple(f"x{i}=1" for i in range(9)), OBJECTS, 40),
    ],
)
def test_bad_register_requests_are_4_00(query: tuple[str, ...], payload: bytes, cf: int) -> None:
    with pytest.raises(InvalidArgument):
        parse_request("POST", ["rd"], list(query), cf, payload)


def test_lifetime_bounds_from_config() -> None:
    r = Registrar(RegistrationConfig(min_lifetime_s=60, max_lifetime_s=3600))
    for lt in ("30", "7200"):
        with pytest.raises(InvalidArgument):
            r.handle(register_req(f"ep={HW}", f"lt={lt}"), peer(), None, now=NOW)
    with pytest.raises(InvalidArgument):
        RegistrationConfig(min_lifetime_s=10, max_lifetime_s=5)


# -- routing of /rd requests ----------------------------------------------------------------


def test_request_routing() -> None:
    assert isinstance(parse_request("POST", ["rd", "abc"], [], None, b""), UpdateRequest)
    assert parse_request("DELETE", ["rd", "abc"], [], None, b"") == DeregisterRequest("abc")
    with pytest.raises(MethodNotAllowed) as info:
        parse_request("GET", ["rd"], [], None, b"")
    assert info.value.coap_code == "4.05"
    with pytest.raises(MethodNotAllowed):
        parse_request("PUT", ["rd", "abc"], [], None, b"")
    for path in (["up", "x"], ["rd", "a", "b"], [], ["rd", "../x"], ["rd", "a" * 40]):
        with pytest.raises(NotFound):
            parse_request("POST", path, [], None, b"")
    with pytest.raises(InvalidArgument):
        parse_request("DELETE", ["rd", "abc"], ["lt=5"], None, b"")


# -- Update ---------------------------------------------------------------------------------


def update(
    registrar: Registrar,
    reg: Registration | None,
    reg_id: str,
    *query: str,
    payload: bytes = b"",
    p: Peer | None = None,
    now: float = NOW + 100,
):  # type: ignore[no-untyped-def]
    req = parse_request("POST", ["rd", reg_id], list(query), 40 if payload else None, payload)
    return registrar.handle(req, p or peer(), reg, now=now)


def test_unknown_registration_id_on_update_is_4_04(registrar: Registrar) -> None:
    with pytest.raises(NotFound) as info:
        update(registrar, None, "nope")
    assert info.value.coap_code == "4.04"
    reg = registered(registrar)
    with pytest.raises(NotFound):  # the glue loaded a different record
        update(registrar, reg, "other")


def test_update_of_another_devices_registration_is_4_04(registrar: Registrar) -> None:
    reg = registered(registrar)
    with pytest.raises(NotFound):
        update(registrar, reg, reg.registration_id, p=peer(OTHER, "SN-0002"))
    with pytest.raises(NotFound):
        parse_and = parse_request("DELETE", ["rd", reg.registration_id], [], None, b"")
        registrar.handle(parse_and, peer(OTHER, "SN-0002"), reg, now=NOW)


def test_update_after_expiry_is_4_04(registrar: Registrar) -> None:
    reg = registered(registrar)  # lt=300
    assert not reg.expired(NOW + 299.9) and reg.expired(NOW + 300)
    with pytest.raises(NotFound):
        update(registrar, reg, reg.registration_id, now=NOW + 300)


def test_empty_update_refreshes_the_lifetime(registrar: Registrar) -> None:
    reg = registered(registrar)
    out = update(registrar, reg, reg.registration_id, p=peer(node="node-b"))
    assert out.reply.code == "2.04" and out.delete is None
    new = out.save
    assert new is not None and new.updated_at == NOW + 100 and new.expires_at == NOW + 400
    assert new.registered_at == NOW and new.node_id == "node-b"
    assert isinstance(out.event, Updated) and not out.event.objects_changed


def test_update_lifetime_binding_and_objects(registrar: Registrar) -> None:
    reg = registered(registrar)
    out = update(registrar, reg, reg.registration_id, "lt=60", "b=UQ", "Q", "sms=123",
                 payload=b"</1/0>,</3/0>")  # fmt: skip
    new = out.save
    assert new is not None
    assert (new.lifetime_s, new.binding, new.queue_mode, new.sms) == (60, "UQ", True, "123")
    assert new.objects.object_ids() == [1, 3]
    assert isinstance(out.event, Updated) and out.event.objects_changed
    assert out.event.previous == reg


def test_update_checks_binding_by_version(registrar: Registrar) -> None:
    reg10 = registered(registrar, f"ep={HW}", "lwm2m=1.0")
    out = update(registrar, reg10, reg10.registration_id, "b=UQ")
    assert out.save is not None and out.save.queue_mode
    with pytest.raises(InvalidArgument):
        update(registrar, reg10, reg10.registration_id, "b=T")
    with pytest.raises(InvalidArgument):
        update(registrar, reg10, reg10.registration_id, "Q")
    with pytest.raises(InvalidArgument):
        update(registrar, reg10, reg10.registration_id, "ep=x")
    with pytest.raises(InvalidArgument):
        update(registrar, reg10, reg10.registration_id, payload=b"</1/0")


# -- De-register ----------------------------------------------------------------------------


def test_deregister(registrar: Registrar) -> None:
    reg = registered(registrar)
    req = parse_request("DELETE", ["rd", reg.registration_id], [], None, b"")
    out = registrar.handle(req, peer(), reg, now=NOW + 1)
    assert out.reply.code == "2.02" and out.save is None and out.delete == reg
    assert isinstance(out.event, Deregistered)
    with pytest.raises(NotFound):
        registrar.handle(DeregisterRequest("r9"), peer(), None, now=NOW)


# -- storage form ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, [], {"registration_id": "x"}, {"lifetime_s": "x"}])
def test_registration_from_bad_json(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        Registration.from_json(bad)
