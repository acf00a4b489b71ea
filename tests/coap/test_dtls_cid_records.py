"""The RFC 9146 record layer (``adapters/dtls/cid.py``): the TLS 1.2 PRF against the
published vectors, the key block and AEAD protection against OpenSSL's own records of a
non-CID session (same keys, same bytes, both directions, every suite we offer), the
RFC 9146 5 record and additional data, and the replay window."""

from __future__ import annotations

from pathlib import Path

import pytest
from OpenSSL import SSL

from corem_ingress import devcerts
from corem_ingress.adapters.dtls import _binding, cid
from corem_ingress.adapters.dtls.records import split_records
from corem_ingress.sim.dtls_client import connected_pair, drain, dtls12_context

pytestmark = pytest.mark.unit


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("\n", ""))


def test_prf_sha256_vector() -> None:
    # The TLS 1.2 PRF test vectors published on the IETF TLS list (msg03416).
    out = cid.prf(
        "sha256", h("9b be 43 6b a9 40 f0 17 b1 76 52 84 9a 71 db 35"), b"test label",
        h("a0 ba 9f 93 6c da 31 18 27 a6 f7 96 ff d5 19 8c"), 100,
    )  # fmt: skip
    assert out == h(
        """e3 f2 29 ba 72 7b e1 7b 8d 12 26 20 55 7c d4 53 c2 aa b2 1d 07 c3 d4 95 32 9b 52 d4
        e6 1e db 5a 6b 30 17 91 e9 0d 35 c9 c9 a4 6b 4e 14 ba f9 af 0f a0 22 f7 07 7d ef 17
        ab fd 37 97 c0 56 4b ab 4f bc 91 66 6e 9d ef 9b 97 fc e3 4f 79 67 89 ba a4 80 82 d1
        22 ee 42 c5 a7 2e 5a 51 10 ff f7 01 87 34 7b 66"""
    )


def test_prf_sha384_vector() -> None:
    out = cid.prf(
        "sha384", h("b8 0b 73 3d 6c ee fc dc 71 56 6e a4 8e 55 67 df"), b"test label",
        h("cd 66 5c f6 a8 44 7d d6 ff 8b 27 55 5e db 74 65"), 148,
    )  # fmt: skip
    assert out == h(
        """7b 0c 18 e9 ce d4 10 ed 18 04 f2 cf a3 4a 33 6a 1c 14 df fb 49 00 bb 5f d7 94 21 07
        e8 1c 83 cd e9 ca 0f aa 60 be 9f e3 4f 82 b1 23 3c 91 46 a0 e5 34 cb 40 0f ed 27 00
        88 4f 9d c2 36 f8 0e dd 8b fa 96 11 44 c9 e8 d7 92 ec a7 22 a7 b3 2f c3 d4 16 d4 73
        eb c2 c5 fd 4a bf da d0 5d 91 84 25 9b 5b f8 cd 4d 90 fa 0d 31 e2 de c4 79 e4 f1 a2
        60 66 f2 ee a9 a6 92 36 a3 e5 26 55 c9 e9 ae e6 91 c8 f3 a2 68 54 30 8d 5e aa 3b e8
        5e 09 90 70 3d 73 e5 6f"""
    )


# -- against OpenSSL ----------------------------------------------------------------------------

SUITES = cid.SUITE_IDS


def openssl_pair(cipher: str, tmp: Path) -> tuple[SSL.Connection, SSL.Connection]:
    """An OpenSSL DTLS 1.2 server and client, handshake done over memory BIOs."""
    server_ctx = dtls12_context(SSL.DTLS_SERVER_METHOD, cipher)
    client_ctx = dtls12_context(SSL.DTLS_CLIENT_METHOD, cipher)
    if cipher.startswith("PSK"):
        _binding.set_psk_server_callback(server_ctx, lambda conn, ident: b"k" * 16)
        _binding.set_psk_client_callback(client_ctx, lambda conn, hint: (b"dev", b"k" * 16))
    else:
        issued = devcerts.issue(devcerts.make_ca("cid test CA"), "localhost", server=True)
        issued.write(tmp / "s.pem", tmp / "s.key")
        server_ctx.use_certificate_file(str(tmp / "s.pem"))
        server_ctx.use_privatekey_file(str(tmp / "s.key"))
    return connected_pair(server_ctx, client_ctx)


def keys_of(server: SSL.Connection, suite: cid.AeadSuite) -> cid.KeyBlock:
    master = server.master_key()
    client_random, server_random = server.client_random(), server.server_random()
    assert master and client_random and server_random
    return cid.KeyBlock.derive(suite, master, client_random, server_random)


@pytest.mark.parametrize("cipher", list(SUITES))
def test_same_keys_same_bytes_as_openssl(cipher: str, tmp_path: Path) -> None:
    server, client = openssl_pair(cipher, tmp_path)
    suite = cid.SUITES[SUITES[cipher]]
    keys = keys_of(server, suite)
    # The client's record, as OpenSSL wrote it, is byte for byte ours with the same keys.
    client.send(b"uplink payload")
    (record,) = split_records(drain(client))
    epoch, seq = cid.record_epoch_seq(record.raw)
    ours_client = cid.RecordCipher(suite, keys.client_key, keys.client_salt)
    # OpenSSL's CCM explicit nonce is the epoch and sequence number (as ours); its GCM one
    # counts from a random start: the record carries it.
    explicit = None
    if suite.gcm:
        explicit = record.raw[13:21]
    else:
        assert record.raw[13:21] == record.raw[3:11]
    assert ours_client.seal(23, epoch, seq, b"uplink payload", None, explicit) == record.raw
    opened = ours_client.open(record.raw, 0)
    assert (opened.content_type, opened.epoch, opened.payload) == (23, 1, b"uplink payload")
    # And OpenSSL's client reads what we protect as the server.
    ours_server = cid.RecordCipher(suite, keys.server_key, keys.server_salt)
    client.bio_write(ours_server.seal(23, 1, 7, b"downlink", None))
    assert client.recv(100) == b"downlink"
    # A flipped bit anywhere fails the tag.
    tampered = bytearray(record.raw)
    tampered[-1] ^= 1
    with pytest.raises(cid.BadRecord):
        ours_client.open(bytes(tampered), 0)


def test_cid_record_layout_and_additional_data() -> None:
    """RFC 9146 4 and 5: the record header carries the CID before the length, the inner
    plaintext ends with the real type, the AAD is the one of 5 (checked by decrypting
    with an AAD built here from the RFC's formula)."""
    suite = cid.SUITES[0xC0A8]  # CCM_8, LwM2M's mandatory suite
    key, salt = bytes(range(16)), b"\x01\x02\x03\x04"
    c = cid.RecordCipher(suite, key, salt)
    record = c.seal(23, 1, 5, b"hello", b"\xaa\xbb\xcc\xdd")
    assert record[:3] == b"\x19\xfe\xfd"  # tls12_cid, DTLS 1.2
    assert record[3:11] == b"\x00\x01" + (5).to_bytes(6, "big")
    assert record[11:15] == b"\xaa\xbb\xcc\xdd"
    body = record[17:]
    assert int.from_bytes(record[15:17], "big") == len(body) == 8 + 6 + 8
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    aad = (
        b"\xff" * 8  # seq_num_placeholder
        + bytes([25, 4, 25])  # tls12_cid, cid_length, tls12_cid
        + b"\xfe\xfd"
        + b"\x00\x01"  # epoch
        + (5).to_bytes(6, "big")
        + b"\xaa\xbb\xcc\xdd"
        + (6).to_bytes(2, "big")  # length_of_DTLSInnerPlaintext
    )
    inner = AESCCM(key, tag_length=8).decrypt(salt + body[:8], body[8:], aad)
    assert inner == b"hello\x17"
    # Receivers strip the zero padding a sender may add (mbedTLS pads to 16 bytes).
    padded = AESCCM(key, tag_length=8).encrypt(
        salt + body[:8], b"hello\x17" + b"\x00" * 10, aad[:-2] + (16).to_bytes(2, "big")
    )
    padded_record = record[:15] + (8 + len(padded)).to_bytes(2, "big") + body[:8] + padded
    opened = c.open(padded_record, 4)
    assert (opened.content_type, opened.seq, opened.payload) == (23, 5, b"hello")
    # The CID is authenticated: the same record with another CID does not open.
    with pytest.raises(cid.BadRecord):
        c.open(record[:11] + b"\xaa\xbb\xcc\xde" + record[15:], 4)
    assert cid.split(record + record, 4) == [record, record]
    assert cid.record_cid(record, 4) == b"\xaa\xbb\xcc\xdd"


def test_replay_window() -> None:
    w = cid.ReplayWindow()
    assert w.check(0) and w.accept(0)
    assert not w.check(0)  # duplicate
    assert w.check(5) and w.accept(5)
    assert w.check(3) and not w.accept(3)  # late but inside the window: not newer
    assert not w.check(3)
    assert w.check(200) and w.accept(200)
    assert not w.check(100)  # older than the window
    assert w.check(199) and w.check(137)


def test_extension_data() -> None:
    assert cid.cid_extension(b"\x01\x02") == b"\x02\x01\x02"
    assert cid.parse_cid_extension(b"\x02\x01\x02") == b"\x01\x02"
    assert cid.parse_cid_extension(b"\x00") == b""
    assert cid.parse_cid_extension(b"\x03\x01") is None
    assert cid.parse_cid_extension(b"") is None
    tag = cid.node_tag("node-a")
    own = cid.node_cid(tag, 8, b"\x00" * 6)
    assert own[:2] == tag and len(own) == 8
    assert cid.node_cid(tag, 0, b"") == b""


def test_node_frames_are_authenticated() -> None:
    from corem_ingress.adapters.dtls import cluster

    key = b"\x07" * 32
    frame = cluster.wrap(key, cluster.TO_OWNER, ("10.0.0.7", 40123), b"\x19record")
    opened = cluster.unwrap(key, frame)
    assert opened == cluster.Frame(cluster.TO_OWNER, ("10.0.0.7", 40123), b"\x19record")
    assert frame[:2] == cluster.MAGIC and frame[:1] not in (bytes([t]) for t in range(20, 26))
    assert cluster.unwrap(b"\x08" * 32, frame) is None  # another key
    for i in range(len(frame)):  # any changed byte: address, kind, datagram or tag
        tampered = bytearray(frame)
        tampered[i] ^= 1
        assert cluster.unwrap(key, bytes(tampered)) is None
    assert cluster.unwrap(key, frame[:10]) is None


def test_connection_id_config_is_checked() -> None:
    from corem_ingress.config import ConfigError, ConnectionIdConfig

    for length in (0, 4, 8, 16):
        ConnectionIdConfig(length=length).validate()
    for length in (1, 3, 17, -1):
        with pytest.raises(ConfigError, match=r"coap\.connection_id\.length"):
            ConnectionIdConfig(length=length).validate()
