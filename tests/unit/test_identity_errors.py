import pytest

from corem_ingress.core import errors
from corem_ingress.core.identity import (
    CredentialKind,
    check_device_id,
    check_hardware_id,
    check_tenant_id,
    new_device_id,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("good", ["acme", "a", "t-1_x", "0tenant"])
def test_tenant_ok(good: str) -> None:
    assert check_tenant_id(good) == good


@pytest.mark.parametrize("bad", ["", "Acme", "-x", "a" * 64, "a b", "a:b", "acme\n", "{x}"])
def test_tenant_bad(bad: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        check_tenant_id(bad)


@pytest.mark.parametrize("bad", ["", "a" * 129, "a b", "x\n", "a/b", "é"])
def test_hardware_bad(bad: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        check_hardware_id(bad)


def test_hardware_ok() -> None:
    assert check_hardware_id("AA:BB:CC:00:11:22") == "AA:BB:CC:00:11:22"
    assert check_hardware_id("SN-0001.rev2@lot=7+x")


def test_device_id() -> None:
    d = new_device_id()
    assert check_device_id(d) == d
    for bad in ["", "x", d.upper(), d.replace("-", ""), d + "\n"]:
        with pytest.raises(errors.InvalidArgument):
            check_device_id(bad)


def test_credential_kind_parse() -> None:
    assert CredentialKind.parse("psk") is CredentialKind.PSK
    with pytest.raises(errors.InvalidArgument):
        CredentialKind.parse("password")


def test_every_error_carries_its_replies() -> None:
    expected = {
        errors.Unauthenticated: ("UNAUTHENTICATED", 401, "4.01", 5, 2),
        errors.PermissionDenied: ("PERMISSION_DENIED", 403, "4.03", 5, 2),
        errors.NotFound: ("NOT_FOUND", 404, "4.04", 5, 2),
        errors.AlreadyExists: ("ALREADY_EXISTS", 409, "4.09", 5, 2),
        errors.InvalidArgument: ("INVALID_ARGUMENT", 400, "4.00", 4, 2),
        errors.FailedPrecondition: ("FAILED_PRECONDITION", 412, "4.12", 5, 2),
        errors.ResourceExhausted: ("RESOURCE_EXHAUSTED", 429, "4.29", 3, 1),
        errors.Unavailable: ("UNAVAILABLE", 503, "5.03", 3, 1),
        errors.DeviceFailed: ("DEVICE_ERROR", 502, "5.02", 3, 1),
    }
    assert set(expected) == set(errors.ALL_ERRORS)
    for cls, (code, http, coap, connack, cli) in expected.items():
        e = cls("m", retry_after_s=1) if cls is errors.ResourceExhausted else cls("m")
        assert isinstance(e, errors.IngressError)
        assert (e.code, e.http_status, e.coap_code, e.mqtt_connack, e.cli_exit) == (
            code,
            http,
            coap,
            connack,
            cli,
        )
        assert e.to_json() == {"error": {"code": code, "message": "m"}}
    # A device's failure names the device's own CoAP code (LwM2M, issue 11.10).
    failed = errors.DeviceFailed("m", device_code="5.00")
    assert failed.to_json() == {
        "error": {"code": "DEVICE_ERROR", "message": "m", "coap_code": "5.00"}
    }


def test_unauthenticated_reason_is_not_the_message() -> None:
    e = errors.Unauthenticated(reason="revoked")
    assert e.reason == "revoked"
    assert "revoked" not in e.message


def test_coap_max_age_says_when_to_try_again() -> None:
    from corem_ingress.core.errors import (
        InvalidArgument,
        ResourceExhausted,
        Unavailable,
        coap_max_age,
    )

    assert coap_max_age(ResourceExhausted("rate", retry_after_s=7), 5) == 7  # 4.29's own wait
    assert coap_max_age(Unavailable(), 5) == 5  # 5.03: not stored, send again after it
    assert coap_max_age(InvalidArgument("bad"), 5) is None  # 4.00: trying again will not help
