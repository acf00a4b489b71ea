"""Provisioning by claim: the pure rules (core/claims.py)."""

from __future__ import annotations

import dataclasses

import pytest

from corem_ingress.core import claims
from corem_ingress.core.claims import (
    Action,
    Claim,
    ClaimKind,
    ClaimStatus,
    Enrolment,
    Refusal,
    decide,
)
from corem_ingress.core.errors import (
    AlreadyExists,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from corem_ingress.core.identity import CredentialKind

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0


def claim(**changes: object) -> Claim:
    base = Claim(
        "clm_0123456789abcdef",
        "acme",
        ClaimKind.API_KEY,
        CredentialKind.API_KEY,
        max_uses=3,
        uses=0,
        expires_at=NOW + 3600,
        status=ClaimStatus.ACTIVE,
        created_at=NOW - 10,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def enrolled(used: bool = False, claim_id: str = "clm_0123456789abcdef") -> Enrolment:
    return Enrolment(claim_id, "dev", "key_1", used)


def test_a_fresh_hardware_id_is_issued_a_device() -> None:
    assert decide(claim(), None, device_exists=False, now=NOW).action is Action.ISSUE


def test_a_retry_before_first_use_reissues_without_counting_a_use() -> None:
    full = claim(uses=3)  # even a claim with no use left re-issues what it enrolled
    assert decide(full, enrolled(), device_exists=True, now=NOW).action is Action.REISSUE


def test_a_retry_after_first_use_is_refused() -> None:
    d = decide(claim(), enrolled(used=True), device_exists=True, now=NOW)
    assert d.refusal is Refusal.ALREADY_USED and d.action is None
    assert isinstance(d.refusal.error(), AlreadyExists)


def test_a_device_the_claim_did_not_enrol_is_not_claimable() -> None:
    # an operator's device (no enrolment) and another claim's device alike
    d1 = decide(claim(), None, device_exists=True, now=NOW)
    d2 = decide(claim(), enrolled(claim_id="clm_ffffffffffffffff"), device_exists=True, now=NOW)
    assert d1.refusal is d2.refusal is Refusal.NOT_CLAIMABLE


def test_uses_are_bounded() -> None:
    assert decide(claim(uses=2), None, device_exists=False, now=NOW).action is Action.ISSUE
    d = decide(claim(uses=3), None, device_exists=False, now=NOW)
    assert d.refusal is Refusal.EXHAUSTED
    assert isinstance(d.refusal.error(), PermissionDenied)


@pytest.mark.parametrize(
    ("changes", "refusal"),
    [
        ({"status": ClaimStatus.REVOKED}, Refusal.REVOKED),
        ({"expires_at": NOW}, Refusal.EXPIRED),
        ({"expires_at": NOW - 1}, Refusal.EXPIRED),
    ],
)
def test_revoked_or_expired_claims_do_nothing_not_even_reissue(
    changes: dict[str, object], refusal: Refusal
) -> None:
    c = claim(**changes)
    for enrolment in (None, enrolled()):
        d = decide(c, enrolment, device_exists=enrolment is not None, now=NOW)
        assert d.refusal is refusal
        assert isinstance(d.refusal.error(), Unauthenticated)


def test_a_claim_without_expiry_lives_until_revoked() -> None:
    assert decide(claim(expires_at=None), None, device_exists=False, now=NOW * 2).action is (
        Action.ISSUE
    )


@pytest.mark.parametrize(
    ("credential_kind", "max_uses", "expires_at", "message"),
    [
        (CredentialKind.X509, 1, None, "api_key or psk"),
        (CredentialKind.API_KEY, 0, None, "max_uses"),
        (CredentialKind.API_KEY, claims.MAX_USES + 1, None, "max_uses"),
        (CredentialKind.API_KEY, True, None, "integer"),
        (CredentialKind.API_KEY, 1, NOW, "future"),
        (CredentialKind.API_KEY, 1, NOW + claims.MAX_LIFETIME_S + 1, "5 years"),
        (CredentialKind.API_KEY, 1, float("nan"), "future"),
    ],
)
def test_bad_claims_are_refused(
    credential_kind: CredentialKind, max_uses: int, expires_at: float | None, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        claims.check_new_claim(ClaimKind.API_KEY, credential_kind, max_uses, expires_at, now=NOW)


def test_claim_keys_are_not_api_keys_and_round_trip() -> None:
    from corem_ingress.core import api_keys

    key = claims.generate_claim_key()
    assert claims.is_claim_key(key) and not api_keys.is_well_formed(key)
    assert not claims.is_claim_key(api_keys.generate())
    assert not claims.is_claim_key(key[:-1])
    assert claims.hash_claim_key(key) != key and len(claims.hash_claim_key(key)) == 64


def test_claim_psk_identities_never_meet_device_identities() -> None:
    from corem_ingress.core import psk

    identity = claims.claim_psk_identity(claims.new_claim_id())
    assert claims.is_claim_psk_identity(identity)
    assert len(identity) <= 32  # tinydtls's longest PSK identity
    psk.check_identity(identity)
    with pytest.raises(InvalidArgument):  # no tenant can assign one to a device
        psk.check_tenant_identity("claim", identity)
    assert not claims.is_claim_psk_identity(psk.generate_identity("claim", "hw-1"))


def test_expiry_parsing() -> None:
    assert claims.parse_expiry("90d", now=NOW) == NOW + 90 * 86400
    assert claims.parse_expiry("12h", now=NOW) == NOW + 12 * 3600
    assert claims.parse_expiry("2027-01-01T00:00:00Z", now=NOW) == 1798761600.0
    for bad in ("soon", "12", "2027-01-01T00:00:00", "-5d"):
        with pytest.raises(InvalidArgument):
            claims.parse_expiry(bad, now=NOW)


def test_claim_records_round_trip_and_show_no_secret() -> None:
    c = claim(kind=ClaimKind.PSK, lookup="claim.0123456789abcdef.01234567", uses=3)
    assert Claim.from_record(c.to_record()) == c
    shown = c.to_json(NOW)
    assert shown["status"] == "exhausted" and shown["psk_identity"] == c.lookup
    assert claim().to_json(NOW + 7200)["status"] == "expired"


def test_rate_windows() -> None:
    assert claims.rate_window(120.5, 60) == (2, 60)
    assert claims.rate_window(179.9, 60) == (2, 1)
    assert not claims.over_rate(5, 5) and claims.over_rate(6, 5)
    assert not claims.over_rate(10**6, 0)


def test_the_pending_mark_is_found_in_compact_json() -> None:
    assert claims.is_pending('{"t":"a","d":"b","c":"k","pe":"hw-1"}')
    assert not claims.is_pending('{"t":"a","d":"b","c":"k"}')
