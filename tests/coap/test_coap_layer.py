"""The CoAP message layer and the device site, bytes in / bytes out: no sockets, no DTLS."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiocoap import ACK, CON, NON, RST, Message
from aiocoap.numbers.codes import Code

from corem_ingress.adapters.coap.endpoint import CoapEndpoint
from corem_ingress.adapters.coap.site import DeviceSession, DeviceSite, SiteLimits
from corem_ingress.adapters.dtls.events import Credential
from corem_ingress.core.downlink import Downlink
from corem_ingress.core.errors import Unavailable
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.uplink import Uplink

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
        self.endpoint = CoapEndpoint(self._send, self._handle, ack_timeout=0.05, max_retransmit=2)

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
