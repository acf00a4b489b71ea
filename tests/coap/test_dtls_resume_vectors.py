"""The pure half of session resumption (``adapters/dtls/resume.py``) against a fixed vector:
an abbreviated handshake recorded from OpenSSL 4.0 (``PSK-AES128-CCM8``, OpenSSL's own
session cache on both ends, memory BIOs): our ServerHello, ChangeCipherSpec and Finished
record for that ClientHello, master secret and server random are OpenSSL's bytes, and
OpenSSL's client Finished verifies. Then the cases a recording does not show: a Finished
in fragments, a wrong one, a forged record, a retransmission, and which hellos resume."""

from __future__ import annotations

import dataclasses

import pytest

from corem_ingress.adapters.dtls import cid, resume
from corem_ingress.adapters.dtls.cid_session import CidSession
from corem_ingress.core.dtls_resumption import StoredSession

pytestmark = pytest.mark.unit

CLIENT_HELLO = bytes.fromhex(
    "16feff000000000000000000990100008d000000000000008dfefdc163fa3815349afd49baf6d87b"
    "da7dffe959858e85c7b6e73c6f16c45ab1d58420ef5158941a74be6342cfbb5e2b279f8cc8ffedc6"
    "1fe9770419c8e06293c2dc01000002c0a801000041ff010001000016000000170000000d0030002e"
    "040305030603080708080809080a080b080408050806040105010601030302030301020103020202"
    "040205020602"
)
SERVER_FLIGHT = bytes.fromhex(
    "16fefd0000000000000000005d020000510000000000000051fefde2ebf684cac29bd8bcd4023bdc"
    "fc075c33e6ae6ed8a6bdcebe2210edf2b2da9920ef5158941a74be6342cfbb5e2b279f8cc8ffedc6"
    "1fe9770419c8e06293c2dc01c0a8000009ff010001000017000014fefd0000000000000001000101"
    "16fefd00010000000000000028000100000000000060fb30c99a213abcdb9f4aefefa6d8f262ed2f"
    "eef4a2da801c739ec86280c7d3"
)
CLIENT_FLIGHT = bytes.fromhex(
    "14fefd000000000000000100010116fefd000100000000000000280001000000000000a414616f94"
    "58b1da70af936b1db509c059a8299b83ff53a3b053cb03ec1d8429"
)
MASTER = bytes.fromhex(
    "af734c998915b4d0b4589e4e2a314065d147139f1397745fa53c84f4abf16ffd0e12f9f0b3df0524"
    "8981f61d87342be2"
)

SUITE = 0xC0A8  # PSK-AES128-CCM8
STORED = StoredSession(SUITE, MASTER, True, "psk", "dev1")


def _handshake() -> resume.ResumedHandshake:
    hello = resume.parse_hello(CLIENT_HELLO)
    assert hello is not None
    server_hello = cid.split(SERVER_FLIGHT, 0)[0][13:]
    server_random = server_hello[14:46]
    return resume.ResumedHandshake(hello, STORED, server_random, CidSession(peer_cid=b""))


def test_our_flight_is_openssls_and_its_client_finished_verifies() -> None:
    hello = resume.parse_hello(CLIENT_HELLO)
    assert hello is not None and len(hello.session_id) == 32
    assert resume.EXT_EXTENDED_MASTER_SECRET in hello.extensions
    assert resume.EXT_RENEGOTIATION_INFO in hello.extensions
    handshake = _handshake()
    assert handshake.flight == cid.split(SERVER_FLIGHT, 0)  # byte for byte
    change_cipher_spec, finished = cid.split(CLIENT_FLIGHT, 0)
    assert handshake.receive(change_cipher_spec) is resume.Outcome.WAITING
    assert handshake.receive(finished) is resume.Outcome.DONE


def _client_writer() -> CidSession:
    """The client's side of the same keys (to write Finished records of our own)."""
    handshake = _handshake()
    client = CidSession(peer_cid=b"")
    server_random = handshake.server_random
    client.set_keys(SUITE, MASTER, handshake.hello.random, server_random, client=True)
    return client


def _verify_data() -> bytes:
    finished = cid.split(CLIENT_FLIGHT, 0)[1]
    opened = _handshake().session.unprotect(finished)
    assert opened is not None
    return opened[0].payload[12:]


def test_a_finished_in_fragments_over_two_records() -> None:
    handshake, client, data = _handshake(), _client_writer(), _verify_data()
    head = bytes([20, 0, 0, 12, 0, 1])
    first = client.protect(22, head + b"\0\0\0" + b"\0\0\x05" + data[:5])
    second = client.protect(22, head + b"\0\0\x05" + b"\0\0\x07" + data[5:])
    assert handshake.receive(first) is resume.Outcome.WAITING
    assert handshake.receive(first) is resume.Outcome.WAITING  # retransmitted: a replay
    assert handshake.receive(second) is resume.Outcome.DONE


def test_a_wrong_finished_or_a_forged_record_fails() -> None:
    handshake, client, data = _handshake(), _client_writer(), _verify_data()
    header = bytes([20, 0, 0, 12, 0, 1, 0, 0, 0, 0, 0, 12])
    wrong = bytes([data[0] ^ 1]) + data[1:]
    assert handshake.receive(client.protect(22, header + wrong)) is resume.Outcome.FAILED
    forged = bytearray(cid.split(CLIENT_FLIGHT, 0)[1])
    forged[-1] ^= 1
    assert _handshake().receive(bytes(forged)) is resume.Outcome.FAILED


def test_which_hellos_resume() -> None:
    hello = resume.parse_hello(CLIENT_HELLO)
    assert hello is not None
    assert resume.check_hello(hello, STORED) is None
    without_ems = dataclasses.replace(STORED, extended_master_secret=False)
    # RFC 7627 5.3: the new hello offers EMS, the session had none: a full handshake.
    assert resume.check_hello(hello, without_ems) is resume.Refusal.FULL_HANDSHAKE
    no_ems_hello = dataclasses.replace(
        hello, extensions={k: v for k, v in hello.extensions.items() if k != 23}
    )
    # The session used EMS, the new hello does not offer it: abort.
    assert resume.check_hello(no_ems_hello, STORED) is resume.Refusal.ABORT
    other_suite = dataclasses.replace(STORED, suite=0x00A8)  # not offered by this hello
    assert resume.check_hello(hello, other_suite) is resume.Refusal.FULL_HANDSHAKE
    assert resume.parse_hello(CLIENT_HELLO[:60]) is None  # cut: left to OpenSSL
