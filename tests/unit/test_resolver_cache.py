import pytest

from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.resolver_cache import ResolverCache

pytestmark = pytest.mark.unit

K = CredentialKind.API_KEY
ID = DeviceIdentity("t", "d", K, "key_1")


def cache(**kw: float) -> ResolverCache:
    args = {"ttl": 10.0, "negative_ttl": 2.0, "max_entries": 3}
    args.update(kw)
    return ResolverCache(
        ttl=args["ttl"], negative_ttl=args["negative_ttl"], max_entries=int(args["max_entries"])
    )


def test_positive_entry_until_ttl() -> None:
    c = cache()
    c.put(K, "h", ID, now=100.0)
    entry = c.get(K, "h", 109.9)
    assert entry is not None and entry.identity == ID
    assert c.get(K, "h", 110.0) is None
    assert c.hits == 1 and c.misses == 1


def test_negative_entry_and_its_shorter_ttl() -> None:
    c = cache()
    c.put_negative(K, "h", now=0.0)
    entry = c.get(K, "h", 1.0)
    assert entry is not None and entry.identity is None
    assert c.get(K, "h", 2.0) is None


def test_negative_ttl_zero_means_no_negative_entries() -> None:
    c = cache(negative_ttl=0)
    c.put_negative(K, "h", now=0.0)
    assert len(c) == 0


def test_lru_bound() -> None:
    c = cache(max_entries=2)
    c.put(K, "a", ID, now=0)
    c.put(K, "b", ID, now=0)
    assert c.get(K, "a", 1) is not None  # a is now most recent
    c.put(K, "c", ID, now=0)
    assert c.get(K, "b", 1) is None
    assert c.get(K, "a", 1) is not None and c.get(K, "c", 1) is not None


def test_evict_expiry_and_clear() -> None:
    c = cache()
    c.put(K, "h", ID, now=0)
    c.set_credential_expiry(K, "h", 5.0)
    entry = c.get(K, "h", 1)
    assert entry is not None and entry.credential_expires_at == 5.0
    assert not entry.credential_expired(4.9) and entry.credential_expired(5.0)
    c.evict(K, "h")
    assert c.get(K, "h", 1) is None
    c.put(K, "x", ID, now=0)
    c.clear()
    assert len(c) == 0


def test_kinds_do_not_collide() -> None:
    c = cache()
    c.put(CredentialKind.PSK, "same", ID, now=0, secret=b"s" * 32)
    assert c.get(CredentialKind.X509, "same", 1) is None
    entry = c.get(CredentialKind.PSK, "same", 1)
    assert entry is not None and entry.secret == b"s" * 32


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        ResolverCache(ttl=0, negative_ttl=1, max_entries=1)


# -- outage grace (resolver.outage_grace_s) ---------------------------------------------------
def test_a_gap_without_grace_keeps_nothing() -> None:
    c = cache(ttl=30.0)
    c.put(K, "h", ID, now=100.0)
    assert c.suspend(gap_started_at=101.0, grace_s=0) == 0
    assert c.get(K, "h", 102.0) is None and c.fallback(K, "h") is None


def test_a_gap_keeps_only_entries_verified_within_the_grace_as_fallbacks() -> None:
    c = cache(ttl=30.0)
    c.put(K, "old", ID, now=80.0)  # verified 20 s before the gap
    c.put(K, "recent", ID, now=95.0)  # 5 s before
    c.put_negative(K, "unknown", now=99.0)  # negative entries never vouch
    assert c.suspend(gap_started_at=100.0, grace_s=10.0) == 1
    # Never answered from directly (Redis is asked first): only as a fallback.
    assert c.get(K, "recent", 101.0) is None
    kept = c.fallback(K, "recent")
    assert kept is not None and kept.identity == ID and kept.verified_at == 95.0
    assert c.fallback(K, "old") is None and c.fallback(K, "unknown") is None


def test_a_fallback_goes_when_redis_answers_or_a_revocation_arrives() -> None:
    c = cache(ttl=30.0)
    for name in ("a", "b", "c"):
        c.put(K, name, ID, now=99.0)
    c.suspend(gap_started_at=100.0, grace_s=10.0)
    c.put(K, "a", ID, now=101.0)  # Redis vouched again: a fresh entry, no fallback
    c.put_negative(K, "b", now=101.0)  # Redis said no
    assert c.fallback(K, "a") is None and c.fallback(K, "b") is None
    c.evict(K, "c")  # a revocation event
    assert c.fallback(K, "c") is None and c.fallbacks == 0


def test_end_of_outage_drops_every_fallback_and_expiry_events_reach_them() -> None:
    c = cache(ttl=30.0)
    c.put(K, "a", ID, now=99.0)
    c.suspend(gap_started_at=100.0, grace_s=10.0)
    c.set_credential_expiry(K, "a", 150.0)  # a rotation's overlap end, while in the outage
    kept = c.fallback(K, "a")
    assert kept is not None and kept.credential_expired(150.0)
    c.end_outage()
    assert c.fallbacks == 0
