"""A small CoAP (RFC 7252) message layer on aiocoap's codec, over any datagram session.

Reusable by every CoAP-speaking adapter on the DTLS transport (the device
listener here, LwM2M later). It owns, per peer address:

* message deduplication (a retransmitted CON gets the same response again, a
  duplicate still being processed is ignored);
* piggybacked responses to CON requests, NON responses to NON requests, RST for
  an empty CON ("ping") and for malformed messages whose header still parses;
* server-initiated confirmable messages with retransmission (``request`` for
  requests such as LwM2M's Read/Write/Execute, ``notify`` for Observe
  notifications); a RST to a notification reports ``on_reset``;
* a peer's answer or notification that comes in Block2 blocks is fetched block by
  block and handed over whole (``blockwise.Block2Assembler``, up to ``max_body``);
* options: a request with a critical option we do not implement (If-Match, If-None-Match,
  OSCORE, any unknown odd number) or with an undecodable option value (a Uri-Path that
  is not UTF-8) gets 4.02 Bad Option and never reaches a handler (RFC 7252 5.4.1, 5.4.3);
  Proxy-Uri / Proxy-Scheme get 5.05 (we are no proxy).

Requests are handed to a ``RequestHandler`` coroutine that returns the response
message (code, options, payload); the layer sets type, message id and token.

Every datagram is first decoded by our own codec (``codec.py``): empty messages (ping,
ACK, RST) and plain requests that the ``PlainHandler`` takes (the device site's uplinks
and Observe cancels) are answered without building aiocoap messages; everything else
(malformed ones included) goes through aiocoap's codec as before, with the same answers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeAlias

import structlog
from aiocoap import ACK, CON, NON, RST, Message
from aiocoap.error import UnparsableMessage
from aiocoap.numbers.codes import Code

from corem_ingress.adapters.coap import codec
from corem_ingress.adapters.coap.blockwise import Block2Assembler, BlockError
from corem_ingress.adapters.coap.retransmit import ACK_RANDOM_FACTOR, Retransmission
from corem_ingress.adapters.dtls.events import Address
from corem_ingress.core.errors import DeviceFailed

log = structlog.get_logger("corem.coap")

#: RFC 7252 4.8 transmission parameters (ACK_TIMEOUT and MAX_RETRANSMIT configurable).
EXCHANGE_LIFETIME = 247.0
#: Remembered message ids per peer for deduplication.
DEDUP_ENTRIES = 64
#: Critical options a request may carry here: Uri-Host, Uri-Port, Uri-Path, Uri-Query,
#: Accept, Block2, Block1 (elective, even-numbered options are ignored when unknown).
UNDERSTOOD_CRITICAL = frozenset({3, 7, 11, 15, 17, 23, 27})
#: Proxy-Uri, Proxy-Scheme: 5.05 Proxying Not Supported.
PROXY_OPTIONS = frozenset({35, 39})

SendFn = Callable[[Address, bytes], bool]
#: Returns the response, or an awaitable of it when the request needs I/O (a Redis append):
#: answering without a task where possible saves most of the per-request overhead.
RequestHandler = Callable[[Address, Message], Message | Awaitable[Message]]
#: A plain request's answer: a code (no options, no payload) or a message.
PlainReply: TypeAlias = int | Message
#: Answers a plain request (``codec.PlainRequest``), or returns None, having done nothing,
#: for one the ``RequestHandler`` must see.
PlainHandler = Callable[[Address, codec.PlainRequest], PlainReply | Awaitable[PlainReply] | None]


@dataclass
class _PeerState:
    #: mid -> (encoded response, or None while being processed; time received)
    seen: collections.OrderedDict[int, tuple[bytes | None, float]] = field(
        default_factory=collections.OrderedDict
    )
    #: Our outstanding CON messages: mid -> future resolved on ACK (True) / RST (False).
    outstanding: dict[int, asyncio.Future[bool]] = field(default_factory=dict)
    #: Our outstanding requests: token -> future of the response.
    requests: dict[bytes, asyncio.Future[Message]] = field(default_factory=dict)
    #: Our Observe registrations at the peer: token -> called with each later notification.
    observers: dict[bytes, Callable[[Message], None]] = field(default_factory=dict)
    #: token -> the Observe request (the template of the block requests of a notification).
    observed: dict[bytes, Message] = field(default_factory=dict)
    #: token -> the notification whose remaining blocks are being fetched.
    fetching: dict[bytes, asyncio.Task[None]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def _error_code(coap_code: str) -> Code:
    cls, detail = coap_code.split(".")
    return Code(int(cls) * 32 + int(detail))


def response(code: Code, payload: bytes = b"") -> Message:
    return Message(code=code, payload=payload)


def unsupported_option(msg: Message) -> tuple[Code, str] | None:
    """(reply code, diagnostic) for a request carrying a critical option we do not implement."""
    for opt in msg.opt.option_list():
        number = int(opt.number)
        if number in PROXY_OPTIONS:
            return Code.PROXYING_NOT_SUPPORTED, "this server is no proxy"
        if number & 1 and number not in UNDERSTOOD_CRITICAL:
            return Code.BAD_OPTION, f"unsupported critical option {number}"
    return None


def _header_request(data: bytes) -> tuple[int, bytes] | None:
    """(message id, token) of a datagram whose header says CON request, else None."""
    if len(data) < 4 or data[0] >> 6 != 1 or (data[0] >> 4) & 3 != 0:
        return None
    tkl = data[0] & 0x0F
    code = data[1]
    if tkl > 8 or len(data) < 4 + tkl or not 1 <= code <= 31:
        return None
    return int.from_bytes(data[2:4], "big"), bytes(data[4 : 4 + tkl])


class CoapEndpoint:
    def __init__(
        self,
        send: SendFn,
        handler: RequestHandler,
        *,
        ack_timeout: float = 2.0,
        max_retransmit: int = 4,
        on_reset: Callable[[Address, bytes], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_body: int = 64 * 1024,
        plain: PlainHandler | None = None,
    ) -> None:
        self._send = send
        self._handler = handler
        self._plain = plain
        self.ack_timeout = ack_timeout
        self.max_retransmit = max_retransmit
        self._on_reset = on_reset
        self._clock = clock
        self._peers: dict[Address, _PeerState] = {}
        #: Graceful shutdown: new requests get 5.03 (with this Max-Age) while in-flight ones finish.
        self.draining = False
        self.draining_max_age = 5
        self._mid = random.randrange(0x10000)
        #: Largest body reassembled from a peer's Block2 answer.
        self.max_body = max_body
        self.stats: collections.Counter[str] = collections.Counter()

    def _state(self, addr: Address) -> _PeerState:
        # Not setdefault: that builds a _PeerState (seven containers) for every datagram.
        state = self._peers.get(addr)
        if state is None:
            state = self._peers[addr] = _PeerState()
        return state

    def _next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def new_token(self) -> bytes:
        return random.getrandbits(64).to_bytes(8, "big")

    async def drain(self, within: float) -> None:
        """Stop taking requests; wait (bounded) for those in hand (uplink appends) to answer."""
        self.draining = True
        tasks = [t for state in self._peers.values() for t in state.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=within)

    def forget(self, addr: Address) -> None:
        """The session is gone: drop dedup state, fail outstanding exchanges."""
        state = self._peers.pop(addr, None)
        if state is None:
            return
        for fut in state.outstanding.values():
            if not fut.done():
                fut.set_result(False)
        for rfut in state.requests.values():
            if not rfut.done():
                rfut.set_exception(ConnectionError("session closed"))
        for task in state.tasks:
            task.cancel()
        for fetch in state.fetching.values():
            fetch.cancel()

    # -- input -----------------------------------------------------------------------------
    def datagram_received(self, addr: Address, data: bytes) -> None:
        # The compiled codec takes bytes only (a bytearray goes the general way).
        fast = codec.decode(data) if type(data) is bytes else None
        if fast is not None and self._fast_received(addr, fast):
            return
        try:
            if len(data) < 4 or data[0] & 0x0F > 8:  # token lengths 9-15 are reserved
                raise UnparsableMessage("bad header")
            msg = Message.decode(data)
        except UnparsableMessage:
            self._reject_malformed(addr, data)
            return
        except (ValueError, TypeError, IndexError):  # an option value the codec cannot read
            self._reject_bad_option(addr, data)
            return
        state = self._state(addr)
        if msg.mtype in (ACK, RST):
            self._ack_or_reset(addr, state, msg)
            return
        if msg.code == Code.EMPTY:
            if msg.mtype == CON:  # CoAP ping
                self._send_reply(addr, RST, msg.mid, Message(code=Code.EMPTY))
            return
        if msg.code.is_response():
            self._response_received(addr, state, msg)
            return
        if not msg.code.is_request():
            if msg.mtype == CON:
                self._send_reply(addr, RST, msg.mid, Message(code=Code.EMPTY))
            return
        self._request_received(addr, state, msg)

    def _fast_received(self, addr: Address, msg: codec.CoapMessage) -> bool:
        """An empty message, or a plain request the plain handler answers: handled as the
        general path would (same replies, same dedup); False: the general path takes it."""
        if msg.code == codec.EMPTY:
            if msg.token or msg.options or msg.payload:
                return False
            state = self._state(addr)
            if msg.mtype == codec.CON:  # CoAP ping
                self._send(addr, codec.reply(codec.RST, codec.EMPTY, msg.mid, b""))
            elif msg.mtype != codec.NON:
                self._acked(addr, state, msg.mid, msg.mtype == codec.ACK)
            return True
        if self._plain is None or self.draining:
            return False
        req = codec.plain_request(msg)
        if req is None:
            return False
        state = self._state(addr)
        now = self._clock()
        if self._duplicate(addr, state, req.mid, now):
            return True
        try:
            result = self._plain(addr, req)
        except Exception:
            log.exception("coap.handler_failed")
            result = codec.INTERNAL_SERVER_ERROR
        if result is None:
            return False
        self._remember(state, req.mid, now)
        if isinstance(result, (int, Message)):
            self._plain_respond(addr, state, req, result)
        else:
            self._spawn(state, self._plain_handle(addr, state, req, result))
        return True

    async def _plain_handle(
        self,
        addr: Address,
        state: _PeerState,
        req: codec.PlainRequest,
        pending: Awaitable[PlainReply],
    ) -> None:
        try:
            resp = await pending
        except Exception:
            log.exception("coap.handler_failed")
            resp = codec.INTERNAL_SERVER_ERROR
        self._plain_respond(addr, state, req, resp)

    def _plain_respond(
        self, addr: Address, state: _PeerState, req: codec.PlainRequest, resp: PlainReply
    ) -> None:
        con = req.mtype == codec.CON
        mid = req.mid if con else self._next_mid()
        if isinstance(resp, int):
            raw = codec.reply(codec.ACK if con else codec.NON, resp, mid, req.token)
            self._send(addr, raw)
        else:
            resp.token = req.token
            raw = self._send_reply(addr, ACK if con else NON, mid, resp)
        self._keep_reply(addr, state, req.mid, raw if con else None)

    def _reject_malformed(self, addr: Address, data: bytes) -> None:
        self.stats["malformed"] += 1
        # Header readable and a CON: RST (RFC 7252 4.2); anything else is silently dropped.
        if len(data) >= 4 and data[0] >> 6 == 1 and (data[0] >> 4) & 3 == 0:
            mid = int.from_bytes(data[2:4], "big")
            rst = Message(code=Code.EMPTY)
            self._send_reply(addr, RST, mid, rst)

    def _reject_bad_option(self, addr: Address, data: bytes) -> None:
        """A CON request whose options do not decode (RFC 7252 5.4.3: treated like an
        unrecognized critical option): 4.02; anything else as malformed."""
        head = _header_request(data)
        if head is None:
            self._reject_malformed(addr, data)
            return
        self.stats["bad_option"] += 1
        mid, token = head
        reply = response(Code.BAD_OPTION, b"undecodable option value")
        reply.token = token
        self._send_reply(addr, ACK, mid, reply)

    def _duplicate(self, addr: Address, state: _PeerState, mid: int, now: float) -> bool:
        """A request ``mid`` seen within the exchange lifetime: counted, and its reply (if
        one was kept: a CON's) sent again."""
        seen = state.seen.get(mid)
        if seen is None or now - seen[1] >= EXCHANGE_LIFETIME:
            return False
        self.stats["duplicates"] += 1
        if seen[0] is not None:
            self._send(addr, seen[0])
        return True

    @staticmethod
    def _remember(state: _PeerState, mid: int, now: float) -> None:
        state.seen[mid] = (None, now)
        while len(state.seen) > DEDUP_ENTRIES:
            state.seen.popitem(last=False)

    def _keep_reply(self, addr: Address, state: _PeerState, mid: int, raw: bytes | None) -> None:
        """The reply to request ``mid``, resent on a duplicate (None: a NON's, not resent)."""
        if self._peers.get(addr) is state and mid in state.seen:
            state.seen[mid] = (raw, state.seen[mid][1])

    @staticmethod
    def _spawn(state: _PeerState, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    def _request_received(self, addr: Address, state: _PeerState, msg: Message) -> None:
        now = self._clock()
        if self._duplicate(addr, state, msg.mid, now):
            return
        self._remember(state, msg.mid, now)
        refused = unsupported_option(msg)
        if refused is not None:
            self.stats["bad_option"] += 1
            if msg.mtype == CON:  # a NON one is ignored (RFC 7252 5.4.1)
                self._respond(addr, state, msg, response(refused[0], refused[1].encode()))
            return
        if self.draining:  # shutting down: nothing new is taken on, the device retries elsewhere
            self.stats["refused_draining"] += 1
            busy = response(Code.SERVICE_UNAVAILABLE)
            busy.opt.max_age = self.draining_max_age
            self._respond(addr, state, msg, busy)
            return
        try:
            result = self._handler(addr, msg)
        except Exception:
            log.exception("coap.handler_failed")
            result = response(Code.INTERNAL_SERVER_ERROR)
        if isinstance(result, Message):
            self._respond(addr, state, msg, result)
            return
        self._spawn(state, self._handle(addr, state, msg, result))

    async def _handle(
        self, addr: Address, state: _PeerState, msg: Message, pending: Awaitable[Message]
    ) -> None:
        try:
            resp = await pending
        except Exception:
            log.exception("coap.handler_failed")
            resp = response(Code.INTERNAL_SERVER_ERROR)
        self._respond(addr, state, msg, resp)

    def _respond(self, addr: Address, state: _PeerState, msg: Message, resp: Message) -> None:
        mtype = ACK if msg.mtype == CON else NON
        mid = msg.mid if msg.mtype == CON else self._next_mid()
        resp.token = msg.token
        raw = self._send_reply(addr, mtype, mid, resp)
        self._keep_reply(addr, state, msg.mid, raw if msg.mtype == CON else None)

    def _send_reply(self, addr: Address, mtype: object, mid: int, msg: Message) -> bytes:
        msg.mtype = mtype
        msg.mid = mid
        raw: bytes = msg.encode()
        self._send(addr, raw)
        return raw

    def _ack_or_reset(self, addr: Address, state: _PeerState, msg: Message) -> None:
        self._acked(addr, state, msg.mid, msg.mtype == ACK)
        if msg.mtype == RST:
            return
        if msg.code != Code.EMPTY and msg.code.is_response():
            self._response_received(addr, state, msg, piggybacked=True)

    def _acked(self, addr: Address, state: _PeerState, mid: int, ack: bool) -> None:
        """An ACK (``ack``) or RST of our CON message ``mid``."""
        fut = state.outstanding.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(ack)
        if not ack and fut is not None and self._on_reset is not None:
            self._on_reset(addr, getattr(fut, "_corem_token", b""))

    def _response_received(
        self, addr: Address, state: _PeerState, msg: Message, *, piggybacked: bool = False
    ) -> None:
        rfut = state.requests.pop(msg.token, None)
        observer = state.observers.get(msg.token)
        if rfut is None and observer is None and not piggybacked and msg.mtype != ACK:
            # A notification for an observation we do not hold: RST ends it (RFC 7641 3.6).
            self._send_reply(addr, RST, msg.mid, Message(code=Code.EMPTY))
            return
        if not piggybacked and msg.mtype == CON:
            self._send_reply(addr, ACK, msg.mid, Message(code=Code.EMPTY))
        if rfut is not None and not rfut.done():
            rfut.set_result(msg)
        elif observer is not None:
            if _more_blocks(msg):
                self._fetch_notification(addr, state, msg)
                return
            self._deliver(observer, msg)

    @staticmethod
    def _deliver(observer: Callable[[Message], None], msg: Message) -> None:
        try:
            observer(msg)
        except Exception:
            log.exception("coap.observer_failed")

    def _fetch_notification(self, addr: Address, state: _PeerState, first: Message) -> None:
        """A notification's first block: fetch the rest (the newest notification wins)."""
        token = first.token
        template = state.observed.get(token)
        if template is None:
            return
        previous = state.fetching.pop(token, None)
        if previous is not None:
            previous.cancel()

        async def fetch() -> None:
            try:
                whole = await self._rest_of(addr, template, first, response_timeout=30.0)
            except (DeviceFailed, TimeoutError, ConnectionError) as exc:
                self.stats["block2_failed"] += 1
                log.info("coap.notification_blocks_failed", peer=addr[0], error=str(exc))
                return
            finally:
                if state.fetching.get(token) is task:
                    del state.fetching[token]
            observer = state.observers.get(token)
            if observer is not None:
                self._deliver(observer, whole)

        task = asyncio.ensure_future(fetch())
        state.fetching[token] = task

    # -- output ----------------------------------------------------------------------------
    async def _transmit_confirmable(self, addr: Address, msg: Message, token: bytes) -> bool:
        """Send CON with retransmission; True once ACKed, False on RST, timeout or close."""
        state = self._state(addr)
        mid = self._next_mid()
        msg.mtype = CON
        msg.mid = mid
        raw = msg.encode()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        fut._corem_token = token  # type: ignore[attr-defined]
        state.outstanding[mid] = fut
        schedule = Retransmission.start(
            self._clock(),
            ack_timeout=self.ack_timeout,
            max_retransmit=self.max_retransmit,
            random_factor=random.uniform(1.0, ACK_RANDOM_FACTOR),
        )
        try:
            while True:
                if not self._send(addr, raw):
                    return False
                wait = max(0.0, schedule.next_at - self._clock())
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(fut), wait)
                if not schedule.timed_out(self._clock()):
                    self.stats["con_timeouts"] += 1
                    return False
        finally:
            state.outstanding.pop(mid, None)

    async def notify(self, addr: Address, msg: Message, *, confirmable: bool) -> bool:
        """Send a server-initiated non-request message (an Observe notification)."""
        token: bytes = msg.token
        if confirmable:
            return await self._transmit_confirmable(addr, msg, token)
        msg.mtype = NON
        msg.mid = self._next_mid()
        return self._send(addr, msg.encode())

    async def request(
        self,
        addr: Address,
        msg: Message,
        *,
        response_timeout: float = 30.0,
        token: bytes | None = None,
        on_notification: Callable[[Message], None] | None = None,
    ) -> Message:
        """A server-initiated confirmable request; returns the peer's response.

        ``on_notification``: the request is an Observe registration; each later response
        with its token (a notification) is passed to it until ``stop_observing``.
        ``token``: reuse a token (a Cancel-Observe must carry the observation's).
        """
        state = self._state(addr)
        token = self.new_token() if token is None else token
        msg.token = token
        if on_notification is not None:
            state.observers[token] = on_notification
            state.observed[token] = msg
        try:
            answer = await self._exchange(addr, state, msg, token, response_timeout)
            if _more_blocks(answer):
                answer = await self._rest_of(addr, msg, answer, response_timeout=response_timeout)
            return answer
        except BaseException:
            if on_notification is not None:
                state.observers.pop(token, None)
                state.observed.pop(token, None)
            raise

    async def _exchange(
        self,
        addr: Address,
        state: _PeerState,
        msg: Message,
        token: bytes,
        response_timeout: float,
    ) -> Message:
        """One confirmable request and its response (piggybacked or separate)."""
        loop = asyncio.get_running_loop()
        rfut: asyncio.Future[Message] = loop.create_future()
        state.requests[token] = rfut
        try:
            acked = await self._transmit_confirmable(addr, msg, token)
            if not acked and not rfut.done():
                raise TimeoutError("no acknowledgement from peer")
            return await asyncio.wait_for(rfut, response_timeout)
        finally:
            state.requests.pop(token, None)

    async def _rest_of(
        self, addr: Address, request: Message, first: Message, *, response_timeout: float
    ) -> Message:
        """The whole answer whose first block is ``first``: GET (without Observe) the next
        blocks of the same resource (RFC 7959 2.4, 3.4); the first block's code, Observe and
        Content-Format stand for the whole."""
        state = self._state(addr)
        assembler = Block2Assembler(self.max_body)
        block = first
        try:
            while True:
                b2 = block.opt.block2
                nxt = assembler.feed(
                    b2.block_number, b2.more, b2.size_exponent, bytes(block.payload),
                    block.opt.etag,
                )  # fmt: skip
                if nxt is None:
                    break
                follow = Message(code=request.code, payload=request.payload)
                for opt in request.opt.option_list():
                    if int(opt.number) not in (6, 23, 27):  # Observe, Block2, Block1
                        follow.opt.add_option(opt)
                follow.opt.block2 = (nxt[0], False, nxt[1])
                token = self.new_token()
                follow.token = token
                block = await self._exchange(addr, state, follow, token, response_timeout)
                if block.code != first.code or block.opt.block2 is None:
                    raise DeviceFailed(
                        f"the device answered block {nxt[0]} with {block.code}",
                        reason="block2 follow-up refused",
                    )
        except BlockError as exc:
            raise DeviceFailed(
                f"the device's block-wise answer is inconsistent: {exc.reason}",
                reason="block2 assembly",
            ) from None
        whole = Message(code=first.code, payload=assembler.body)
        whole.token, whole.mid, whole.mtype = first.token, first.mid, first.mtype
        for opt in first.opt.option_list():
            if int(opt.number) not in (23, 28):  # Block2, Size2
                whole.opt.add_option(opt)
        self.stats["block2_assembled"] += 1
        return whole

    def stop_observing(self, addr: Address, token: bytes) -> None:
        """Forget an observation: later notifications with ``token`` get a RST."""
        state = self._peers.get(addr)
        if state is not None:
            state.observers.pop(token, None)
            state.observed.pop(token, None)
            fetch = state.fetching.pop(token, None)
            if fetch is not None:
                fetch.cancel()


def _more_blocks(msg: Message) -> bool:
    """A successful answer that is the first of several Block2 blocks."""
    b2 = msg.opt.block2
    return bool(msg.code.is_successful() and b2 is not None and b2.more)


def error_response(coap_code: str, payload: bytes = b"") -> Message:
    return response(_error_code(coap_code), payload)
