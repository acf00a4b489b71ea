import pytest

from corem_ingress.core.causes import Cause
from corem_ingress.core.events import CredentialEvent, EventType
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.sessions import LiveSession, SessionRegistry

pytestmark = pytest.mark.unit

A = DeviceIdentity("t1", "d1", CredentialKind.X509, "fp-a")
B = DeviceIdentity("t1", "d2", CredentialKind.X509, "fp-b")
K = DeviceIdentity("t2", "d3", CredentialKind.API_KEY, "key_1")


def reg() -> SessionRegistry:
    r = SessionRegistry()
    r.register(LiveSession("s1", "mqtt", A, "fp-a"))
    r.register(LiveSession("s2", "coap", A, "fp-a"))
    r.register(LiveSession("s3", "mqtt", B, "fp-b"))
    r.register(LiveSession("s4", "http", K, "hash"))
    return r


def test_revoke_orders_exactly_that_credentials_sessions() -> None:
    r = reg()
    orders = r.revoke(CredentialKind.X509, "fp-a", Cause.CREDENTIAL_REVOKED)
    assert sorted(o.session_id for o in orders) == ["s1", "s2"]
    assert {o.transport for o in orders} == {"mqtt", "coap"}
    assert all(o.identity == A and o.cause is Cause.CREDENTIAL_REVOKED for o in orders)
    assert len(r) == 2 and "s1" not in r
    assert r.revoke(CredentialKind.X509, "fp-a") == []


def test_same_id_other_kind_is_not_touched() -> None:
    r = reg()
    assert r.revoke(CredentialKind.API_KEY, "fp-a") == []
    assert len(r) == 4


def test_unregister_and_reregister() -> None:
    r = reg()
    assert r.unregister("s1") is not None
    assert r.unregister("s1") is None
    r.register(LiveSession("s3", "mqtt", A, "fp-a"))  # same id, new identity replaces
    assert [s.session_id for s in r.sessions_of(CredentialKind.X509, "fp-b")] == []
    assert {s.session_id for s in r.sessions_of(CredentialKind.X509, "fp-a")} == {"s2", "s3"}


def test_overlap_expiry() -> None:
    r = reg()
    assert r.next_expiry() is None
    r.set_credential_expiry(CredentialKind.API_KEY, "key_1", 50.0)
    assert r.next_expiry() == 50.0
    assert r.due(49.9) == []
    orders = r.due(50.0)
    assert [o.session_id for o in orders] == ["s4"] and orders[0].cause is Cause.CREDENTIAL_EXPIRED
    assert r.next_expiry() is None


def test_revoke_sessions_by_id() -> None:
    r = reg()
    orders = r.revoke_sessions(["s3", "nope"], Cause.NO_LONGER_VALID)
    assert [o.session_id for o in orders] == ["s3"]


def test_event_roundtrip_and_bad_input() -> None:
    e = CredentialEvent(EventType.EXPIRES, CredentialKind.API_KEY, "h", "key_1", "t", "d", 1.5, 9.0)
    assert CredentialEvent.decode(e.encode()) == e
    for bad in [b"", b"{}", b"[]", b'{"type":"nope"}', b"\xff"]:
        with pytest.raises(ValueError):
            CredentialEvent.decode(bad)
