"""The CoAP message layer and the device site, bytes in / bytes out: no sockets, no DTLS."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiocoap import ACK, CON, NON, RST, Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption

from corem_ingress.adapters.coap.endpoint import CoapEndpoint
from corem_ingress.adapters.coap.site import DeviceSession, DeviceSite, SiteLimits
from corem_ingress.adapters.dtls.events import Credential
from corem_ingress.core.downlink import Downlink
from corem_ingress.core.errors import Unavailable
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.uplink import Uplink

pytestmark = pytest.mark.unit

ADDR = ("127.0.0.1", 5000)
IDENT = DeviceIdentity("acme", "dev-1", CredentialKind.PSK, "cred-1")
CRED = Credential(CredentialKind.PSK, "psk-id", IDENT)


def req(
    code: Code,
    path: str,
    payload: bytes = b"",
    *,
    mtype: Any = CON,
    mid: int = 1,
    token: bytes = b"t1",
    **opts: Any,
) -> bytes:
    m = Message(code=code, payload=payload)
    m.mtype, m.mid, m.token = mtype, mid, token
    m.opt.uri_path = tuple(p for p in path.split("/") if p)
    for k, v in opts.items():
        setattr(m.opt, k, v)
    return bytes(m.encode())


class Harness:
    def __init__(
        self, *, fail_append: bool = False, credential: Credential | None = CRED, **limits: Any
    ) -> None:
        self.sent: list[Message] = []
        self.appended: list[Uplink] = []
        self.fail_append = fail_append
        self.session = DeviceSession(ADDR, "s1", credential)
        self.site = DeviceSite(self._append, limits=SiteLimits(**limits))
        # The plain requests take the listener's path around aiocoap (test_codec.py checks
        # that both paths answer alike).
        self.endpoint = CoapEndpoint(
            self._send,
            self._handle,
            ack_timeout=0.05,
            max_retransmit=2,
            plain=lambda addr, req: self.site.plain(self.session, req),
        )

    def _send(self, addr: Any, data: bytes) -> bool:
        self.sent.append(Message.decode(data))
        return True

    async def _append(self, uplink: Uplink) -> str:
        if self.fail_append:
            raise Unavailable()
        self.appended.append(uplink)
        return "1-0"

    def _handle(self, addr: Any, msg: Message) -> Any:
        return self.site.handle(self.session, msg)

    async def exchange(self, data: bytes) -> Message | None:
        n = len(self.sent)
        self.endpoint.datagram_received(ADDR, data)
        for _ in range(100):  # bounded: the handler runs as a task
            if len(self.sent) > n:
                return self.sent[-1]
            await asyncio.sleep(0)
        return None


async def test_uplink_piggybacked_changed_after_append() -> None:
    h = Harness()
    resp = await h.exchange(req(Code.POST, "up/telemetry", b'{"a":1}', mid=7, token=b"tk"))
    assert resp is not None and resp.mtype == ACK and resp.mid == 7 and resp.token == b"tk"
    assert resp.code == Code.CHANGED
    (u,) = h.appended
    assert (u.tenant_id, u.device_id, u.transport.value, u.kind.value, u.payload) == (
        "acme",
        "dev-1",
        "coap",
        "telemetry",
        {"a": 1},
    )


async def test_non_request_gets_non_response() -> None:
    h = Harness()
    resp = await h.exchange(req(Code.POST, "up/event", b"x", mtype=NON, mid=9))
    assert resp is not None and resp.mtype == NON and resp.code == Code.CHANGED


async def test_store_down_is_503_with_max_age_never_204() -> None:
    h = Harness(fail_append=True, unavailable_max_age_s=7)
    resp = await h.exchange(req(Code.POST, "up/telemetry", b"1"))
    assert resp is not None and resp.code == Code.SERVICE_UNAVAILABLE and resp.opt.max_age == 7


async def test_no_identity_is_401() -> None:
    h = Harness(credential=None)
    resp = await h.exchange(req(Code.POST, "up/telemetry", b"1"))
    assert resp is not None and resp.code == Code.UNAUTHORIZED and h.appended == []


@pytest.mark.parametrize(
    ("code", "path", "expected"),
    [
        (Code.POST, "up/bogus", Code.BAD_REQUEST),
        (Code.GET, "up/telemetry", Code.METHOD_NOT_ALLOWED),
        (Code.POST, "down", Code.METHOD_NOT_ALLOWED),
        (Code.GET, "nope", Code.NOT_FOUND),
        (Code.POST, "up/telemetry/extra", Code.NOT_FOUND),
    ],
)
async def test_bad_requests(code: Code, path: str, expected: Code) -> None:
    h = Harness()
    resp = await h.exchange(req(code, path, b"1"))
    assert resp is not None and resp.code == expected


async def test_duplicate_con_gets_the_same_response_and_one_append() -> None:
    h = Harness()
    raw = req(Code.POST, "up/event", b"x", mid=42)
    first = await h.exchange(raw)
    h.endpoint.datagram_received(ADDR, raw)
    assert first is not None and len(h.sent) == 2
    dup = h.sent[1]
    assert (dup.mtype, dup.mid, dup.token, dup.code) == (first.mtype, 42, first.token, Code.CHANGED)
    assert len(h.appended) == 1


async def test_ping_and_malformed_get_rst_and_garbage_is_dropped() -> None:
    h = Harness()
    ping = Message(code=Code.EMPTY)
    ping.mtype, ping.mid = CON, 77
    h.endpoint.datagram_received(ADDR, ping.encode())
    assert h.sent[-1].mtype == RST and h.sent[-1].mid == 77
    # CON header, token length 9 (reserved): malformed -> RST with its mid.
    h.endpoint.datagram_received(ADDR, bytes([0x49, 0x01, 0x12, 0x34]) + b"x" * 9)
    assert h.sent[-1].mtype == RST and h.sent[-1].mid == 0x1234
    # Reserved option delta 15 without the payload marker.
    h.endpoint.datagram_received(ADDR, b"\x40\x01\x43\x21\xf1\x00")
    assert h.sent[-1].mtype == RST and h.sent[-1].mid == 0x4321
    n = len(h.sent)
    for junk in (b"", b"\x00", b"\xff\xff", b"\x80\x01\x00\x01", b"\x50\xff\x00\x01\xff"):
        h.endpoint.datagram_received(ADDR, junk)
    assert len(h.sent) == n
    assert h.endpoint.stats["malformed"] >= 5


async def test_block1_assembly_and_413() -> None:
    h = Harness(max_body_bytes=100)
    body = bytes(range(48, 48 + 64)) + b"tail"
    r0 = await h.exchange(req(Code.POST, "up/telemetry", body[:32], mid=1, block1=(0, True, 1)))
    assert r0 is not None and r0.code == Code.CONTINUE and r0.opt.block1.block_number == 0
    r1 = await h.exchange(req(Code.POST, "up/telemetry", body[32:64], mid=2, block1=(1, True, 1)))
    assert r1 is not None and r1.code == Code.CONTINUE
    r2 = await h.exchange(req(Code.POST, "up/telemetry", body[64:], mid=3, block1=(2, False, 1)))
    assert r2 is not None and r2.code == Code.CHANGED
    assert h.appended[-1].payload == body.decode()
    # Out of order: 4.08.
    bad = await h.exchange(req(Code.POST, "up/telemetry", b"x" * 32, mid=4, block1=(3, True, 1)))
    assert bad is not None and bad.code == Code.REQUEST_ENTITY_INCOMPLETE
    # Too large, announced (Size1) or discovered while assembling: 4.13 with Size1.
    big = await h.exchange(
        req(Code.POST, "up/telemetry", b"x" * 32, mid=5, block1=(0, True, 1), size1=5000)
    )
    assert big is not None and big.code == Code.REQUEST_ENTITY_TOO_LARGE and big.opt.size1 == 100
    for i in range(3):
        r = await h.exchange(req(Code.POST, "up/event", b"y" * 32, mid=10 + i, block1=(i, True, 1)))
    assert r is not None and r.code == Code.CONTINUE
    r = await h.exchange(req(Code.POST, "up/event", b"y" * 32, mid=13, block1=(3, True, 1)))
    assert r is not None and r.code == Code.REQUEST_ENTITY_TOO_LARGE
    one = await h.exchange(req(Code.POST, "up/event", b"z" * 101, mid=20))
    assert one is not None and one.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert len(h.appended) == 1


async def test_observe_notifications_and_block2() -> None:
    h = Harness(block_size=64)
    first = await h.exchange(req(Code.GET, "down", mid=1, token=b"ob", observe=0))
    assert first is not None and first.code == Code.CONTENT and first.opt.observe == 0
    obs = h.session.observations[b"ob"]
    small = h.site.notification(
        h.session, obs, Downlink.new("acme", "dev-1", "cfg", {"a": 1}, qos=0, now=0)
    )
    assert small.payload == b'{"a":1}' and small.opt.observe == 1 and small.opt.content_format == 50
    big_text = "0123456789" * 20
    big = h.site.notification(
        h.session, obs, Downlink.new("acme", "dev-1", "cfg", big_text, qos=0, now=0)
    )
    assert (
        big.opt.observe == 2
        and big.opt.block2.more
        and len(big.payload) == 64
        and big.opt.size2 == 200
    )
    got = bytearray(big.payload)
    for num in range(1, 4):
        r = await h.exchange(
            req(Code.GET, "down", mid=10 + num, token=b"b2", block2=(num, False, 2))
        )
        assert r is not None and r.code == Code.CONTENT
        got += r.payload
    assert got.decode() == big_text
    cancel = await h.exchange(req(Code.GET, "down", mid=20, token=b"ob", observe=1))
    assert cancel is not None and cancel.opt.observe is None and h.session.observations == {}


async def test_confirmable_notification_retransmits_until_ack_and_rst_cancels() -> None:
    sent: list[Message] = []
    resets: list[bytes] = []

    async def handler(addr: Any, msg: Message) -> Message:
        return Message(code=Code.CONTENT)

    ep = CoapEndpoint(
        lambda a, d: sent.append(Message.decode(d)) or True,
        handler,
        ack_timeout=0.01,
        max_retransmit=3,
        on_reset=lambda a, t: resets.append(t),
    )
    note = Message(code=Code.CONTENT, payload=b"x")
    note.token = b"tok"
    task = asyncio.ensure_future(ep.notify(ADDR, note, confirmable=True))
    for _ in range(1000):
        if len(sent) >= 2:
            break
        await asyncio.sleep(0.005)
    assert len(sent) >= 2 and all(m.mid == sent[0].mid and m.mtype == CON for m in sent)
    ack = Message(code=Code.EMPTY)
    ack.mtype, ack.mid = ACK, sent[0].mid
    ep.datagram_received(ADDR, ack.encode())
    assert await asyncio.wait_for(task, 5) is True

    note2 = Message(code=Code.CONTENT, payload=b"y")
    note2.token = b"tok2"
    task2 = asyncio.ensure_future(ep.notify(ADDR, note2, confirmable=True))
    for _ in range(100):
        if sent[-1].token == b"tok2":
            break
        await asyncio.sleep(0)
    rst = Message(code=Code.EMPTY)
    rst.mtype, rst.mid = RST, sent[-1].mid
    ep.datagram_received(ADDR, rst.encode())
    assert await asyncio.wait_for(task2, 5) is False
    assert resets == [b"tok2"]


async def test_server_initiated_request_gets_the_piggybacked_response() -> None:
    sent: list[Message] = []

    async def handler(addr: Any, msg: Message) -> Message:
        return Message(code=Code.CONTENT)

    ep = CoapEndpoint(lambda a, d: sent.append(Message.decode(d)) or True, handler, ack_timeout=1.0)
    read = Message(code=Code.GET)
    read.opt.uri_path = ("3", "0", "0")
    task = asyncio.ensure_future(ep.request(ADDR, read))
    for _ in range(100):
        if sent:
            break
        await asyncio.sleep(0)
    (out,) = sent
    assert out.mtype == CON and out.code == Code.GET and out.opt.uri_path == ("3", "0", "0")
    resp = Message(code=Code.CONTENT, payload=b"corem")
    resp.mtype, resp.mid, resp.token = ACK, out.mid, out.token
    ep.datagram_received(ADDR, resp.encode())
    got = await asyncio.wait_for(task, 5)
    assert got.payload == b"corem"
    # A separate (CON) response is acknowledged.
    task = asyncio.ensure_future(ep.request(ADDR, Message(code=Code.GET)))
    for _ in range(100):
        if len(sent) == 2:
            break
        await asyncio.sleep(0)
    empty = Message(code=Code.EMPTY)
    empty.mtype, empty.mid = ACK, sent[1].mid
    ep.datagram_received(ADDR, empty.encode())
    late = Message(code=Code.CHANGED)
    late.mtype, late.mid, late.token = CON, 999, sent[1].token
    ep.datagram_received(ADDR, late.encode())
    assert (await asyncio.wait_for(task, 5)).code == Code.CHANGED
    assert sent[-1].mtype == ACK and sent[-1].mid == 999
    ep.forget(ADDR)


# -- issue 11.6: critical options we do not implement ---------------------------------------------


@pytest.mark.parametrize("number", [1, 5, 9, 2049, 65001])
async def test_unsupported_critical_option_is_4_02_and_nothing_is_stored(number: int) -> None:
    h = Harness()
    m = Message(code=Code.POST, payload=b"x")
    m.mtype, m.mid, m.token = CON, 7, b"c1"
    m.opt.uri_path = ("up", "telemetry")
    m.opt.add_option(OpaqueOption(number, b"\x01"))
    r = await h.exchange(m.encode())
    assert r is not None and r.code == Code.BAD_OPTION and r.mtype == ACK and r.token == b"c1"
    assert str(number) in r.payload.decode()
    # The same in a NON request: ignored, no answer (RFC 7252 5.4.1), nothing stored.
    m.mtype, m.mid = NON, 8
    assert await h.exchange(m.encode()) is None
    assert h.appended == []


async def test_elective_unknown_options_are_ignored_and_proxy_uri_is_5_05() -> None:
    h = Harness()
    m = Message(code=Code.POST, payload=b"x")
    m.mtype, m.mid, m.token = CON, 9, b"e1"
    m.opt.uri_path = ("up", "telemetry")
    m.opt.add_option(OpaqueOption(2048, b"\x01"))  # even: elective
    r = await h.exchange(m.encode())
    assert r is not None and r.code == Code.CHANGED and len(h.appended) == 1
    p = Message(code=Code.GET)
    p.mtype, p.mid, p.token = CON, 10, b"p1"
    p.opt.proxy_uri = "coap://example.org/x"
    r = await h.exchange(p.encode())
    assert r is not None and r.code == Code.PROXYING_NOT_SUPPORTED


async def test_an_undecodable_uri_path_is_4_02_not_an_exception() -> None:
    """Issue 11.4: Uri-Path bytes ff fe (not UTF-8) made the codec raise through the DTLS
    layer (no reply, two tracebacks); now it is 4.02 with the request's token."""
    h = Harness()
    raw = bytes([0x42, 0x02, 0x12, 0x34]) + b"tk" + bytes([0xB2]) + b"\xff\xfe"
    r = await h.exchange(raw)
    assert r is not None and r.code == Code.BAD_OPTION and r.mtype == ACK
    assert r.mid == 0x1234 and r.token == b"tk"
    # Not a request (a response with a bad option): not answered with 4.02.
    n = len(h.sent)
    h.endpoint.datagram_received(ADDR, bytes([0x62, 0x45, 0, 1]) + b"tk\xb2\xff\xfe")
    assert all(m.code != Code.BAD_OPTION for m in h.sent[n:])
    assert h.appended == []


# -- issue 11.7: large notifications carry an ETag; their blocks never mix ------------------------


async def test_two_large_notifications_keep_their_own_blocks() -> None:
    h = Harness(block_size=64)
    await h.exchange(req(Code.GET, "down", mid=1, token=b"ob", observe=0))
    obs = h.session.observations[b"ob"]
    a_text, b_text = "A" * 200, "B" * 150
    a = h.site.notification(
        h.session, obs, Downlink.new("acme", "dev-1", "c", a_text, qos=0, now=0)
    )
    assert a.opt.etag is not None and a.opt.block2.more
    b = h.site.notification(
        h.session, obs, Downlink.new("acme", "dev-1", "c", b_text, qos=0, now=0)
    )
    assert b.opt.etag not in (None, a.opt.etag)
    for first, text in ((a, a_text), (b, b_text)):
        got, num = bytearray(first.payload), 1
        while True:  # the client names the representation by its ETag
            r = await h.exchange(
                req(
                    Code.GET,
                    "down",
                    mid=100 + len(h.sent),
                    token=b"b2",
                    block2=(num, False, 2),
                    etag=first.opt.etag,
                )
            )
            assert r is not None and r.code == Code.CONTENT and r.opt.etag == first.opt.etag
            got += r.payload
            if not r.opt.block2.more:
                break
            num += 1
        assert got.decode() == text


# -- issue 11.9: a peer's answers and notifications in Block2 blocks are put together -------------


class Peer:
    """Plays the device: answers our requests for /3/0 in 16-byte blocks."""

    def __init__(self, body: bytes, etag: bytes = b"v1") -> None:
        self.body, self.etag = body, etag
        self.requests: list[Message] = []
        self.ep = CoapEndpoint(self._send, self._handle, ack_timeout=1.0, max_body=1000)

    def _send(self, addr: Any, data: bytes) -> bool:
        msg = Message.decode(data)
        if msg.mtype == CON and msg.code.is_request():
            self.requests.append(msg)
            num = msg.opt.block2.block_number if msg.opt.block2 else 0
            chunk = self.body[num * 16 : (num + 1) * 16]
            resp = Message(code=Code.CONTENT, payload=chunk)
            resp.mtype, resp.mid, resp.token = ACK, msg.mid, msg.token
            resp.opt.block2 = (num, (num + 1) * 16 < len(self.body), 0)
            resp.opt.etag = self.etag
            if msg.opt.observe == 0:
                resp.opt.observe = 1
            asyncio.get_running_loop().call_soon(self.ep.datagram_received, ADDR, resp.encode())
        return True

    @staticmethod
    async def _handle(addr: Any, msg: Message) -> Message:
        return Message(code=Code.NOT_FOUND)


async def test_a_block2_answer_is_fetched_and_put_together() -> None:
    body = bytes(range(50))
    peer = Peer(body)
    read = Message(code=Code.GET)
    read.opt.uri_path, read.opt.accept = ("3", "0"), 110
    got = await asyncio.wait_for(peer.ep.request(ADDR, read), 5)
    assert got.payload == body and got.opt.block2 is None and got.code == Code.CONTENT
    assert [m.opt.block2.block_number if m.opt.block2 else 0 for m in peer.requests] == [0, 1, 2, 3]
    follow = peer.requests[1]  # same resource and Accept, no Observe
    assert follow.opt.uri_path == ("3", "0") and follow.opt.accept == 110
    assert peer.ep.stats["block2_assembled"] == 1


async def test_a_block2_notification_is_delivered_whole() -> None:
    body = b"n" * 40
    peer = Peer(body)
    notes: list[Message] = []
    obs = Message(code=Code.GET)
    obs.opt.uri_path, obs.opt.observe = ("3", "0"), 0
    first = await asyncio.wait_for(peer.ep.request(ADDR, obs, on_notification=notes.append), 5)
    assert first.payload == body and first.opt.observe == 1
    assert all(m.opt.observe is None for m in peer.requests[1:])  # follow-ups do not observe
    # A later notification: its first block comes NON, the rest is fetched.
    peer.body = b"m" * 40
    note = Message(code=Code.CONTENT, payload=peer.body[:16])
    note.mtype, note.mid, note.token = NON, 77, first.token
    note.opt.observe, note.opt.block2, note.opt.etag = 2, (0, True, 0), b"v2"
    peer.etag = b"v2"
    peer.ep.datagram_received(ADDR, note.encode())
    for _ in range(200):
        if notes:
            break
        await asyncio.sleep(0.005)
    assert [n.payload for n in notes] == [b"m" * 40] and notes[0].opt.observe == 2
    # A representation that changes between blocks is not delivered mixed.
    note.mid, note.opt.observe, note.opt.etag = 78, 3, b"v3"
    peer.ep.datagram_received(ADDR, note.encode())
    for _ in range(200):
        if peer.ep.stats["block2_failed"]:
            break
        await asyncio.sleep(0.005)
    assert peer.ep.stats["block2_failed"] == 1 and len(notes) == 1
    peer.ep.forget(ADDR)
