import pytest

from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.resolver_cache import ResolverCache

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
