import base64

import pytest

from corem_ingress.core import psk
from corem_ingress.core.errors import FailedPrecondition, InvalidArgument

pytestmark = pytest.mark.unit


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
    assert psk.parse_psk_hex(RANDOM_HEX[:32]) == bytes.fromhex(RANDOM_HEX[:32])  # 16: registry's
    with pytest.raises(InvalidArgument):
        psk.check_psk(b"a" * 31)
    with pytest.raises(InvalidArgument):
        psk.check_psk(b"a" * 65)
    assert psk.parse_psk_hex(RANDOM_HEX) == bytes.fromhex(RANDOM_HEX)
    with pytest.raises(InvalidArgument):
        psk.parse_psk_hex("zz" * 32)
    assert psk.check_identity("dev-1") == "dev-1"
    assert psk.check_identity("é" * 64)  # 128 bytes of UTF-8
    for bad in ["", "é" * 65, "a\nb", " lead", "tab\t"]:
        with pytest.raises(InvalidArgument):
            psk.check_identity(bad)


RANDOM_HEX = "2ccb2ebd0ee4261b68e62446b43c459fbb0b282ffa69e4f1b3f9b60dd30289fa"


@pytest.mark.parametrize(
    "hex_key",
    [
        "00" * 32,  # issue 12 §4: 32 zero bytes were accepted
        "ff" * 16,
        "ab" * 32,
        "deadbeef" * 8,
        "0123456789abcdef" * 2,  # a 16-byte block twice
        bytes(range(32)).hex(),  # 00 01 02 ...
        bytes(range(255, 191, -1)).hex(),  # ff fe fd ...
        ("00" * 15 + "01") * 2,
        "0001" * 8 + "0100" * 8,  # 2 distinct bytes
    ],
)
def test_trivially_low_entropy_assigned_psks_are_refused(hex_key: str) -> None:
    with pytest.raises(InvalidArgument, match="entropy") as err:
        psk.parse_psk_hex(hex_key)
    assert hex_key[:8] not in str(err.value)


def test_random_psks_pass_the_entropy_check() -> None:
    for _ in range(2000):
        for n in (16, 32, 64):
            key = psk.generate_psk(n)
            assert psk.check_entropy(key) == key


def test_generated_identity_is_unique_and_valid() -> None:
    ids = {psk.generate_identity("acme", "hw-1") for _ in range(50)}
    assert len(ids) == 50
