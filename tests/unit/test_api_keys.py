import base64
import hashlib
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corem_ingress.core import api_keys

pytestmark = pytest.mark.unit

_ALPHABET = string.ascii_letters + string.digits + "-_"
_LAST = "AEIMQUYcgkosw048"


def test_generated_key_format_and_uniqueness() -> None:
    keys = {api_keys.generate() for _ in range(200)}
    assert len(keys) == 200
    for k in keys:
        assert k.startswith("sk_live_")
        assert len(k) == len("sk_live_") + 43
        assert "=" not in k
        assert api_keys.is_well_formed(k)


def test_hash_is_sha256_hex_of_the_text() -> None:
    k = api_keys.generate()
    assert api_keys.hash_key(k) == hashlib.sha256(k.encode()).hexdigest()


def test_malformed_keys_are_rejected() -> None:
    good = api_keys.generate()
    bad = [
        "",
        "sk_live_",
        good[:-1],
        good + "A",
        good.replace("sk_live_", "sk_test_"),
        "sk_live_" + "=" * 43,
        "sk_live_" + "A" * 42 + "B",  # last char carries non-zero padding bits
        " " + good,
        good + "\n",
    ]
    for b in bad:
        assert not api_keys.is_well_formed(b), b


@given(st.text(max_size=80))
def test_arbitrary_text_never_crashes_the_format_check(text: str) -> None:
    api_keys.is_well_formed(text)


def test_check_error_never_echoes_the_input() -> None:
    secretish = "sk_live_" + "x" * 40
    try:
        api_keys.check(secretish)
    except Exception as exc:
        assert secretish not in str(exc)
    else:
        raise AssertionError("malformed key accepted")


@given(st.binary(min_size=32, max_size=32))
def test_every_32_byte_key_is_well_formed(raw: bytes) -> None:
    key = "sk_live_" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert api_keys.is_well_formed(key)


@given(st.text(alphabet=_ALPHABET, min_size=42, max_size=42), st.sampled_from(_LAST))
def test_the_format_alone_means_exactly_32_bytes(body: str, last: str) -> None:
    """is_well_formed skips the decode: every string its pattern takes must decode to 32
    bytes that encode back to it (canonical, no lost bits)."""
    token = body + last
    key = "sk_live_" + token
    assert api_keys.is_well_formed(key)
    decoded = base64.urlsafe_b64decode(token + "=")
    assert len(decoded) == 32
    assert base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() == token
