"""Our CoAP codec (adapters/coap/codec.py) against aiocoap's, and the endpoint's plain path
against its aiocoap path: the same bytes out for the same bytes in. No I/O."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiocoap import CON, NON, Message
from aiocoap.error import UnparsableMessage
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corem_ingress.adapters.coap import codec
from corem_ingress.adapters.coap.endpoint import CoapEndpoint
from corem_ingress.adapters.coap.site import DeviceSession, DeviceSite, Observation, SiteLimits
from corem_ingress.adapters.dtls.events import Credential
from corem_ingress.core.errors import Unavailable
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.uplink import Uplink

pytestmark = pytest.mark.unit

ADDR = ("127.0.0.1", 5000)
IDENT = DeviceIdentity("acme", "dev-1", CredentialKind.PSK, "cred-1")
CRED = Credential(CredentialKind.PSK, "psk-id", IDENT)

tokens = st.binary(max_size=8)
values = st.one_of(st.binary(max_size=20), st.binary(min_size=250, max_size=300))
#: Option lists in wire order: ascending numbers, repeats allowed, deltas of every width.
option_lists = st.lists(st.tuples(st.integers(0, 2100), values), max_size=6).map(
    lambda opts: sorted(opts, key=lambda o: o[0])
)


def aiocoap_bytes(
    mtype: int, code: int, mid: int, token: bytes, options: list[tuple[int, bytes]], payload: bytes
) -> bytes:
    m = Message(code=code, payload=payload)
    m.mtype, m.mid, m.token = mtype, mid, token
    for number, value in options:
        m.opt.add_option(OpaqueOption(number, value))
    return bytes(m.encode())


def aiocoap_fields(data: bytes) -> tuple[Any, ...]:
    m = Message.decode(data)
    opts = [(int(o.number), o.encode()) for o in m.opt.option_list()]
    return int(m.mtype), int(m.code), m.mid, bytes(m.token), opts, bytes(m.payload)


@settings(max_examples=400)
@given(
    st.integers(0, 3),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    tokens,
    option_lists,
    st.binary(max_size=40),
)
def test_encode_is_aiocoaps_and_decode_inverts_it(
    mtype: int, code: int, mid: int, token: bytes, options: list[tuple[int, bytes]], payload: bytes
) -> None:
    ours = codec.encode(mtype, code, mid, token, options, payload)
    assert ours == aiocoap_bytes(mtype, code, mid, token, options, payload)
    msg = codec.decode(ours)
    assert msg is not None
    assert (msg.mtype, msg.code, msg.mid, msg.token, msg.options, msg.payload) == (
        mtype,
        code,
        mid,
        token,
        options,
        payload,
    )
    if not options:
        assert codec.reply(mtype, code, mid, token) + (b"\xff" + payload if payload else b"") == (
            ours
        )


@settings(max_examples=2000)
@given(st.binary(max_size=40))
def test_what_we_accept_aiocoap_reads_the_same(data: bytes) -> None:
    msg = codec.decode(data)
    if msg is None:
        return
    fields = (msg.mtype, msg.code, msg.mid, msg.token, msg.options, msg.payload)
    try:
        theirs = Message.decode(data)
    except (ValueError, TypeError, IndexError):
        return  # an option value aiocoap's types refuse: the endpoint's aiocoap path answers
    raw = [(int(o.number), o) for o in theirs.opt.option_list()]
    assert [n for n, _ in raw] == [n for n, _ in msg.options]
    assert fields[:4] == (int(theirs.mtype), int(theirs.code), theirs.mid, bytes(theirs.token))
    assert msg.payload == bytes(theirs.payload)
    req = codec.plain_request(msg)
    if req is not None:
        assert tuple(theirs.opt.uri_path) == req.path
        assert (theirs.opt.observe if theirs.opt.observe is not None else -1) == req.observe


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x40\x01\x00",  # shorter than the header
        b"\x80\x01\x00\x01",  # version 2
        bytes([0x49, 0x01, 0x12, 0x34]) + b"x" * 9,  # token length 9 (reserved)
        b"\x48\x01\x00\x01abc",  # token longer than the datagram
        b"\x40\x01\x43\x21\xf1\x00",  # option delta 15 without the payload marker
        b"\x40\x01\x00\x01\x1f",  # option length 15
        b"\x40\x01\x00\x01\xb3ab",  # option value past the end
        b"\x40\x01\x00\x01\xd1",  # extended delta missing
        b"\x40\x01\x00\x01\xe1\x00",  # 2-byte extended delta cut
        b"\x40\x01\x00\x01\xff",  # payload marker without payload
    ],
)
def test_malformed_is_refused(data: bytes) -> None:
    assert codec.decode(data) is None


def test_aiocoap_tolerates_what_we_refuse_and_the_endpoint_then_uses_aiocoap() -> None:
    """Two leniencies of aiocoap's decoder that our strict one refuses: the endpoint's
    aiocoap path then takes these datagrams, so their answers are the ones of before."""
    assert Message.decode(b"\x40\x01\x00\x01\xff").payload == b""
    assert Message.decode(b"\x48\x01\x00\x01abc").token == b"abc"
    with pytest.raises(UnparsableMessage):
        Message.decode(b"\x40\x01\x00\x01\x1f")


def test_plain_request_takes_only_the_plain_ones() -> None:
    def plain(mtype: Any, code: Code, opts: list[tuple[int, bytes]]) -> codec.PlainRequest | None:
        msg = codec.decode(aiocoap_bytes(int(mtype), int(code), 1, b"t", opts, b""))
        assert msg is not None
        return codec.plain_request(msg)

    up = [(11, b"up"), (11, b"telemetry")]
    got = plain(CON, Code.POST, [*up, (12, b"\x32"), (15, b"a=1")])
    assert got is not None and got.path == ("up", "telemetry") and got.observe == -1
    got = plain(NON, Code.GET, [(6, b"\x01"), (11, b"down")])
    assert got is not None and got.observe == 1 and got.mtype == codec.NON
    got = plain(CON, Code.GET, [(6, b""), (11, b"down")])
    assert got is not None and got.observe == 0
    for mtype, code, opts in [
        (CON, Code.FETCH, up),  # another method
        (CON, Code.CONTENT, up),  # a response
        (2, Code.GET, up),  # a request in an ACK
        (CON, Code.POST, [*up, (27, b"\x0e")]),  # Block1
        (CON, Code.POST, [*up, (60, b"\x10")]),  # Size1
        (CON, Code.GET, [(4, b"e"), (11, b"down")]),  # ETag
        (CON, Code.GET, [(3, b"host"), (11, b"down")]),  # Uri-Host
        (CON, Code.GET, [(6, b"\x01"), (6, b"\x01"), (11, b"down")]),  # Observe twice
        (CON, Code.GET, [(6, b"\x01\x00\x00\x00"), (11, b"down")]),  # Observe of 4 bytes
        (CON, Code.POST, [(11, b"\xff\xfe")]),  # Uri-Path not UTF-8
        (CON, Code.POST, [*up, (15, b"\xc3")]),  # Uri-Query not UTF-8
        (CON, Code.POST, [*up, (12, b"\x01\x02\x03")]),  # Content-Format of 3 bytes
        (CON, Code.POST, [(11, b"x" * 256)]),  # Uri-Path over 255 bytes
    ]:
        assert plain(mtype, code, opts) is None, (mtype, code, opts)


# -- the endpoint: plain path against aiocoap path ------------------------------------------


class Twin:
    """One device site and endpoint; ``fast``: with the plain handler (the listener's)."""

    def __init__(self, fast: bool, *, fail_append: bool = False) -> None:
        self.sent: list[bytes] = []
        self.appended: list[tuple[str, Any]] = []
        self.fail_append = fail_append
        self.session = DeviceSession(ADDR, "s1", CRED)
        self.site = DeviceSite(self._append, limits=SiteLimits(max_body_bytes=64))
        self.endpoint = CoapEndpoint(
            self._send,
            lambda addr, msg: self.site.handle(self.session, msg),
            plain=(lambda addr, req: self.site.plain(self.session, req)) if fast else None,
            clock=lambda: 100.0,
        )
        self.endpoint._mid = 0  # NON answers' message ids: the same in both

    def _send(self, addr: Any, data: bytes) -> bool:
        self.sent.append(data)
        return True

    async def _append(self, uplink: Uplink) -> str:
        await asyncio.sleep(0)
        if self.fail_append:
            raise Unavailable()
        self.appended.append((uplink.kind.value, uplink.payload))
        return "1-0"

    async def feed(self, datagrams: list[bytes]) -> None:
        for data in datagrams:
            self.endpoint.datagram_received(ADDR, data)
            for _ in range(5):
                await asyncio.sleep(0)

    def outcome(self) -> tuple[Any, ...]:
        observations = sorted(self.session.observations)
        return self.sent, self.appended, observations, dict(self.endpoint.stats)


def run_both(datagrams: list[bytes], **kw: Any) -> tuple[Any, Any]:
    async def go(fast: bool) -> tuple[Any, ...]:
        twin = Twin(fast, **kw)
        twin.session.observations[b"ob"] = Observation(b"ob")
        await twin.feed(datagrams)
        return twin.outcome()

    return asyncio.run(go(False)), asyncio.run(go(True))


def build(
    mtype: int, code: int, mid: int, token: bytes, path: list[bytes], extra: Any, big: bool = False
) -> bytes:
    opts = sorted([(11, p) for p in path] + extra, key=lambda o: o[0])
    body = (b"x" * 65 if big else b'{"t":1}') if code == 2 else b""
    return aiocoap_bytes(mtype, code, mid, token, opts, body)


paths = st.sampled_from(
    [[b"up", b"telemetry"], [b"up", b"event"], [b"up", b"bogus"], [b"down"], [b"nope"], []]
)
extras = st.lists(
    st.sampled_from([(6, b"\x01"), (6, b""), (6, b"\x05"), (15, b"q=1"), (12, b"\x32"), (60, b"")]),
    max_size=2,
    unique=True,
)
requests = st.builds(
    build,
    st.sampled_from([codec.CON, codec.NON]),
    st.sampled_from([0, 1, 2, 3, 4, 5, 69]),
    st.integers(0, 5),  # few message ids: duplicates happen
    st.sampled_from([b"", b"ob", b"t1"]),
    paths,
    extras,
    st.booleans(),
)
mutated = st.builds(
    lambda data, at, byte: data[:at] + bytes([byte]) + data[at + 1 :],
    requests,
    st.integers(0, 12),
    st.integers(0, 255),
)
datagrams = st.lists(
    st.one_of(
        requests,
        mutated,
        st.binary(max_size=12),
        st.sampled_from([b"\x40\x00\x00\x07", b"\x60\x00\x00\x07", b"\x70\x00\x00\x07"]),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datagrams, st.booleans())
def test_the_plain_path_answers_as_the_aiocoap_path(sequence: list[bytes], fail: bool) -> None:
    general, plain = run_both(sequence, fail_append=fail)
    assert plain == general


def test_a_bytearray_datagram_takes_the_general_path() -> None:
    raw = build(codec.CON, 2, 1, b"t1", [b"up", b"telemetry"], [])
    general, plain = run_both([raw])
    (_, bytearray_plain) = run_both([bytearray(raw)])  # type: ignore[list-item]
    assert plain == general == bytearray_plain


def test_the_plain_path_answers_the_usual_requests_as_before() -> None:
    ping = b"\x40\x00\x00\x09"
    sequence = [
        build(codec.CON, 2, 1, b"t1", [b"up", b"telemetry"], []),
        build(codec.CON, 2, 1, b"t1", [b"up", b"telemetry"], []),  # duplicate: same answer
        build(codec.NON, 2, 2, b"t2", [b"up", b"event"], [(12, b"\x32")]),
        build(codec.CON, 1, 3, b"ob", [b"down"], [(6, b"\x01")]),  # Observe cancel
        build(codec.CON, 1, 4, b"t4", [b"nope"], []),
        build(codec.CON, 3, 5, b"t5", [b"up", b"telemetry"], []),  # 4.05
        build(codec.CON, 2, 6, b"t6", [b"up", b"bogus"], []),  # 4.00
        build(codec.CON, 2, 7, b"t7", [b"up", b"telemetry"], [(60, b"\x10")]),  # Size1
        build(codec.CON, 2, 8, b"t8", [b"up", b"telemetry"], [], big=True),  # 4.13
        ping,
    ]
    general, plain = run_both(sequence)
    assert plain == general
    sent, appended, observations, _ = plain
    assert len(appended) == 3 and observations == []  # the Size1 one fits
    assert sent[0] == sent[1] == b"\x62\x44\x00\x01t1"  # ACK 2.04, piggybacked
    assert sent[-1] == b"\x70\x00\x00\x09"  # RST to the ping
    assert run_both(sequence, fail_append=True)[0] == run_both(sequence, fail_append=True)[1]
