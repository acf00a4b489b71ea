import base64

import pytest

from corem_ingress.core import psk
from corem_ingress.core.errors import FailedPrecondition, InvalidArgument


def ring(*kids: str) -> psk.KeyRing:
    return psk.KeyRing.parse("\n".join(psk.generate_kek_line(k) for k in kids))


def test_seal_open_roundtrip_and_binding() -> None:
    r = ring("k1")
    secret = psk.generate_psk()
    sealed = r.seal("acme", "id-1", secret)
    assert sealed.kid == "k1"
    assert secret not in sealed.ciphertext
    assert r.open("acme", "id-1", sealed) == secret
    # Associated data binds tenant and identity: a copied record does not open elsewhere.
    with pytest.raises(FailedPrecondition):
        r.open("other", "id-1", sealed)
    with pytest.raises(FailedPrecondition):
        r.open("acme", "id-2", sealed)


def test_kek_rotation_old_records_still_open() -> None:
    k1_line = psk.generate_kek_line("k1")
    old = psk.KeyRing.parse(k1_line)
    sealed = old.seal("acme", "id", b"x" * 32)
    # New ring: k2 first (active), k1 kept for opening old records.
    both = psk.KeyRing.parse(f"{psk.generate_kek_line('k2')}\n{k1_line}")
    assert both.active_kid == "k2"
    assert both.open("acme", "id", sealed) == b"x" * 32
    assert both.seal("acme", "id", b"y" * 32).kid == "k2"


def test_unknown_kek_id_fails_closed() -> None:
    sealed = ring("k1").seal("t", "i", b"z" * 32)
    with pytest.raises(FailedPrecondition):
        ring("k9").open("t", "i", sealed)


def test_tampered_ciphertext_is_refused() -> None:
    r = ring("k1")
    s = r.seal("t", "i", b"z" * 32)
    bad = psk.SealedPsk(s.kid, s.nonce, bytes([s.ciphertext[0] ^ 1]) + s.ciphertext[1:])
    with pytest.raises(FailedPrecondition):
        r.open("t", "i", bad)


@pytest.mark.parametrize(
    "text",
    ["", "nocolon", "k1:not base64!!", "k1:" + base64.b64encode(b"short").decode(), "bad id!:AAAA"],
)
def test_bad_keyring_text(text: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        psk.KeyRing.parse(text)
    assert "AAAA" not in str(err.value)


def test_psk_length_and_identity_rules() -> None:
    assert psk.check_psk(b"a" * 32)
    assert psk.check_psk(b"a" * 16, min_bytes=16)
    assert psk.parse_psk_hex("ab" * 16) == b"\xab" * 16  # the configured minimum is the registry's
    with pytest.raises(InvalidArgument):
        psk.check_psk(b"a" * 31)
    with pytest.raises(InvalidArgument):
        psk.check_psk(b"a" * 65)
    assert psk.parse_psk_hex("ab" * 32) == b"\xab" * 32
    with pytest.raises(InvalidArgument):
        psk.parse_psk_hex("zz" * 32)
    assert psk.check_identity("dev-1") == "dev-1"
    assert psk.check_identity("é" * 64)  # 128 bytes of UTF-8
    for bad in ["", "é" * 65, "a\nb", " lead", "tab\t"]:
        with pytest.raises(InvalidArgument):
            psk.check_identity(bad)


def test_generated_identity_is_unique_and_valid() -> None:
    ids = {psk.generate_identity("acme", "hw-1") for _ in range(50)}
    assert len(ids) == 50
