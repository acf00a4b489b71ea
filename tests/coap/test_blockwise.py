"""Block-wise transfers (RFC 7959) as plain state: the one Block1 receiver and the one Block2
assembler every CoAP user on the port shares (issue 11.9), and ETag'd representations (11.7)."""

from __future__ import annotations

import pytest

from corem_ingress.adapters.coap.blockwise import (
    Block1Receiver,
    Block2Assembler,
    BlockError,
    Complete,
    Continue,
    Representations,
    block_slice,
    szx_of,
)

pytestmark = pytest.mark.unit

LIMIT = 100


def test_block1_reassembles_in_sequence() -> None:
    rx = Block1Receiver()
    body = bytes(range(70))
    assert rx.feed("k", 0, True, 1, body[:32], max_body=LIMIT) == Continue(0, 1)
    assert rx.feed("k", 1, True, 1, body[32:64], max_body=LIMIT) == Continue(1, 1)
    assert rx.feed("k", 2, False, 1, body[64:], max_body=LIMIT) == Complete(body, 2, 1)
    assert len(rx) == 0


@pytest.mark.parametrize(
    ("blocks", "code"),
    [
        ([(1, True, 1, 32)], "4.08"),  # no block 0: incomplete
        ([(0, True, 1, 32), (2, True, 1, 32)], "4.08"),  # a block missing
        ([(0, True, 1, 31)], "4.00"),  # a non-final block shorter than the block size
        ([(0, True, 7, 32)], "4.00"),  # SZX 7 is reserved over UDP
        ([(0, True, 1, 32), (1, True, 1, 32), (2, True, 1, 32), (3, True, 1, 32)], "4.13"),
    ],
)
def test_block1_refusals(blocks: list[tuple[int, bool, int, int]], code: str) -> None:
    rx = Block1Receiver()
    with pytest.raises(BlockError) as info:
        for num, more, szx, n in blocks:
            rx.feed("k", num, more, szx, b"x" * n, max_body=LIMIT)
    assert info.value.code == code
    assert len(rx) == 0  # a refused transfer is forgotten
    if code == "4.13":
        assert info.value.size1 == LIMIT


def test_block1_size1_announced_too_large_and_bounded_transfers() -> None:
    rx = Block1Receiver(max_transfers=2)
    with pytest.raises(BlockError) as info:
        rx.feed("k", 0, True, 1, b"x" * 32, max_body=LIMIT, size1=5000)
    assert info.value.code == "4.13" and info.value.size1 == LIMIT
    for key in ("a", "b", "c"):
        rx.feed(key, 0, True, 1, b"x" * 32, max_body=LIMIT)
    assert len(rx) == 2  # the oldest transfer was dropped
    with pytest.raises(BlockError):
        rx.feed("a", 1, False, 1, b"x", max_body=LIMIT)
    assert isinstance(rx.feed("c", 1, False, 1, b"x", max_body=LIMIT), Complete)


def test_block2_assembler_follows_the_blocks() -> None:
    asm = Block2Assembler(LIMIT)
    assert asm.feed(0, True, 0, b"a" * 16, b"e1") == (1, 0)
    assert asm.feed(1, True, 0, b"b" * 16, b"e1") == (2, 0)
    assert asm.feed(2, False, 0, b"cc", b"e1") is None
    assert asm.body == b"a" * 16 + b"b" * 16 + b"cc"


@pytest.mark.parametrize(
    ("blocks", "code"),
    [
        ([(0, True, 0, 16, b"e1"), (2, False, 0, 2, b"e1")], "4.08"),  # skipped a block
        ([(0, True, 0, 16, b"e1"), (1, False, 0, 2, b"e2")], "4.08"),  # representation changed
        ([(0, True, 0, 15, None)], "4.00"),
        ([(0, True, 6, 1024, None)], "4.13"),
    ],
)
def test_block2_assembler_refusals(
    blocks: list[tuple[int, bool, int, int, bytes | None]], code: str
) -> None:
    asm = Block2Assembler(LIMIT)
    with pytest.raises(BlockError) as info:
        for num, more, szx, n, etag in blocks:
            asm.feed(num, more, szx, b"x" * n, etag)
    assert info.value.code == code


def test_block_slice() -> None:
    data = bytes(range(40))
    assert block_slice(data, 0, szx_of(16)) == (data[:16], True)
    assert block_slice(data, 2, szx_of(16)) == (data[32:], False)
    assert block_slice(data, 3, szx_of(16)) is None


def test_representations_keep_each_one_by_etag() -> None:
    reps = Representations(max_entries=2)
    a = reps.add(b"A" * 40, 0)
    assert reps.transfer_open and reps.select(()) is a
    b = reps.add(b"B" * 40, 0)
    assert a.etag != b.etag
    # A block request naming an ETag gets that representation, never the other one.
    assert reps.select((a.etag,)) is a and reps.select((b.etag,)) is b
    assert reps.select(()) is b  # the transfer in progress
    reps.served(b, last=True)
    assert not reps.transfer_open
    c = reps.add(b"C", 0)
    assert reps.select((a.etag,)) is c  # a was evicted (bounded): the current one
    reps.abandon()
    assert not reps.transfer_open
