"""The device resources: ``POST /up/{kind}`` and ``GET /down`` (Observe), block-wise.

Pure of sockets: it sees one request at a time with the peer's ``DeviceSession``
(identity from the DTLS handshake only) and returns the response message.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from aiocoap import Message
from aiocoap.numbers.codes import Code

from corem_ingress import metrics
from corem_ingress.adapters.coap import codec
from corem_ingress.adapters.coap.blockwise import (
    Block1Receiver,
    BlockError,
    Complete,
    Representation,
    Representations,
    block_slice,
    szx_of,
)
from corem_ingress.adapters.coap.endpoint import error_response, response
from corem_ingress.adapters.dtls.events import Address, Credential
from corem_ingress.core.causes import Cause
from corem_ingress.core.downlink import Downlink
from corem_ingress.core.errors import IngressError, coap_max_age
from corem_ingress.core.uplink import Transport, Uplink, UplinkKind, payload_from_bytes

CF_TEXT = 0
CF_JSON = 50
_OBSERVE_MOD = 1 << 24


@dataclass
class Observation:
    token: bytes
    seq: int = 0

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) % _OBSERVE_MOD
        return self.seq


@dataclass
class DeviceSession:
    """One DTLS session's CoAP-level state."""

    addr: Address
    session_id: str
    credential: Credential | None
    observations: dict[bytes, Observation] = field(default_factory=dict)
    #: Block1 reassembly of request bodies (``/up`` here, ``/rd`` and ``/dp`` for LwM2M).
    block1: Block1Receiver = field(default_factory=Block1Receiver)
    #: Large notifications served with Block2, by ETag (for the follow-up block requests).
    representations: Representations = field(default_factory=Representations)


@dataclass
class SiteLimits:
    max_body_bytes: int = 64 * 1024
    block_size: int = 512
    unavailable_max_age_s: int = 5


def receive_block1(
    session: DeviceSession, key: Hashable, msg: Message, *, max_body: int
) -> Complete | Message:
    """One Block1 block of ``msg`` into the session's receiver: the whole body once complete,
    else the reply to send now (2.31 Continue, or the refusal)."""
    block = msg.opt.block1
    try:
        step = session.block1.feed(
            key,
            block.block_number,
            block.more,
            block.size_exponent,
            bytes(msg.payload),
            max_body=max_body,
            size1=msg.opt.size1,
        )
    except BlockError as exc:
        return block1_refusal(exc)
    if isinstance(step, Complete):
        return step
    resp = response(Code.CONTINUE)
    resp.opt.block1 = (step.num, True, step.szx)
    return resp


def block1_refusal(exc: BlockError) -> Message:
    """The reply to a refused Block1 block (4.00 / 4.08 / 4.13 with Size1)."""
    if exc.code == "4.13":
        metrics.limit_refused("coap", Cause.MAX_SIZE)
    resp = error_response(exc.code)
    if exc.size1 is not None:
        resp.opt.size1 = exc.size1
    return resp


class DeviceSite:
    def __init__(
        self,
        append: Callable[[Uplink], Awaitable[str]],
        *,
        limits: SiteLimits,
        clock: Callable[[], float] = time.time,
        on_observe: Callable[[DeviceSession], None] | None = None,
    ) -> None:
        self._append = append
        self.limits = limits
        self._clock = clock
        self._on_observe = on_observe

    def handle(self, session: DeviceSession, msg: Message) -> Message | Awaitable[Message]:
        """The response, or an awaitable of it when an uplink must be appended first."""
        if session.credential is None:
            return error_response("4.01")
        path = tuple(msg.opt.uri_path)
        try:
            if len(path) == 2 and path[0] == "up":
                if msg.code != Code.POST:
                    return response(Code.METHOD_NOT_ALLOWED)
                return self._uplink(session, path, msg)
            if path == ("down",):
                if msg.code != Code.GET:
                    return response(Code.METHOD_NOT_ALLOWED)
                return self._down(session, msg)
        except IngressError as exc:
            return self._error(exc)
        return response(Code.NOT_FOUND)

    def plain(
        self, session: DeviceSession, req: codec.PlainRequest
    ) -> int | Message | Awaitable[int | Message] | None:
        """``handle`` for a plain request (``codec.plain_request``: no block, size or other
        option) of an authenticated session, answered as ``handle`` would: a code for an
        answer without options or payload, a message else; None, having done nothing, for
        what ``handle`` must see (an Observe registration, the poll). The listener routes
        mounted paths and ``/bs`` elsewhere before."""
        if session.credential is None:
            return None
        path = req.path
        try:
            if len(path) == 2 and path[0] == "up":
                if req.code != codec.POST:
                    return codec.METHOD_NOT_ALLOWED
                limit = self.limits.max_body_bytes
                kind = UplinkKind.parse(path[1])
                if len(req.payload) > limit:
                    return self._too_large()
                return self._plain_store(self._new_uplink(session, kind, req.payload))
            if path == ("down",):
                if req.code != codec.GET:
                    return codec.METHOD_NOT_ALLOWED
                if req.observe <= 0:
                    return None  # the poll, or an Observe registration
                if req.observe == 1:
                    session.observations.pop(req.token, None)
                return codec.CONTENT
        except IngressError as exc:
            return self._error(exc)
        return codec.NOT_FOUND

    async def _plain_store(self, uplink: Uplink) -> int | Message:
        try:
            await self._append(uplink)
        except IngressError as exc:  # Unavailable -> 5.03 with Max-Age, never 2.04
            return self._error(exc)
        return codec.CHANGED

    def _new_uplink(self, session: DeviceSession, kind: UplinkKind, body: bytes) -> Uplink:
        assert session.credential is not None
        payload, encoding = payload_from_bytes(body)
        return Uplink.new(
            session.credential.identity,
            Transport.COAP,
            kind,
            payload,
            now=self._clock(),
            payload_encoding=encoding,
        )

    def limit_uplinks(
        self,
        wrap: Callable[[Callable[[Uplink], Awaitable[str]]], Callable[[Uplink], Awaitable[str]]],
    ) -> None:
        """Put ``wrap`` around the uplink append (the per-device rate, coap/guard.py)."""
        self._append = wrap(self._append)

    def _error(self, exc: IngressError) -> Message:
        resp = error_response(exc.coap_code)
        max_age = coap_max_age(exc, self.limits.unavailable_max_age_s)
        if max_age is not None:
            resp.opt.max_age = max_age
        return resp

    def _too_large(self) -> Message:
        metrics.limit_refused("coap", Cause.MAX_SIZE)
        resp = response(Code.REQUEST_ENTITY_TOO_LARGE)
        resp.opt.size1 = self.limits.max_body_bytes
        return resp

    # -- POST /up/{kind} -------------------------------------------------------------------
    def _uplink(
        self, session: DeviceSession, path: tuple[str, ...], msg: Message
    ) -> Message | Awaitable[Message]:
        assert session.credential is not None
        kind = UplinkKind.parse(path[1])
        limit = self.limits.max_body_bytes
        if msg.opt.size1 is not None and msg.opt.size1 > limit:
            return self._too_large()
        block = msg.opt.block1
        if block is None:
            if len(msg.payload) > limit:
                return self._too_large()
            body = bytes(msg.payload)
        else:
            step = receive_block1(session, path, msg, max_body=limit)
            if not isinstance(step, Complete):
                return step
            body = step.body
        return self._store(self._new_uplink(session, kind, body), block)

    async def _store(self, uplink: Uplink, block: Any) -> Message:
        try:
            await self._append(uplink)
        except IngressError as exc:  # Unavailable -> 5.03 with Max-Age, never 2.04
            return self._error(exc)
        resp = response(Code.CHANGED)
        if block is not None:
            resp.opt.block1 = (block.block_number, False, block.size_exponent)
        return resp

    # -- GET /down ---------------------------------------------------------------------------
    def _down(self, session: DeviceSession, msg: Message) -> Message:
        block2 = msg.opt.block2
        if block2 is not None and block2.block_number > 0:
            rep = session.representations.select(tuple(msg.opt.etags))
            if rep is None:
                return response(Code.NOT_FOUND)
            szx = min(block2.size_exponent, szx_of(self.limits.block_size))
            return self._block(session, rep, block2.block_number, szx)
        resp = response(Code.CONTENT)
        if msg.opt.observe == 0:
            obs = session.observations.get(msg.token) or Observation(msg.token)
            session.observations[msg.token] = obs
            resp.opt.observe = obs.seq
            if self._on_observe is not None:
                self._on_observe(session)
        elif msg.opt.observe == 1:
            session.observations.pop(msg.token, None)
        return resp

    @staticmethod
    def _block(session: DeviceSession, rep: Representation, num: int, szx: int) -> Message:
        part = block_slice(rep.data, num, szx)
        if part is None:
            return response(Code.BAD_OPTION)
        chunk, more = part
        resp = response(Code.CONTENT, chunk)
        resp.opt.content_format = rep.content_format
        resp.opt.etag = rep.etag
        resp.opt.block2 = (num, more, szx)
        session.representations.served(rep, last=not more)
        return resp

    def downlink_response(self, session: DeviceSession, dl: Downlink) -> Message:
        """2.05 carrying one downlink (its first block, with an ETag, if large): a
        notification's body, or the answer to ``GET /down`` for a queued one."""
        data = dl.payload_bytes()
        cf = CF_TEXT if isinstance(dl.payload, str) else CF_JSON
        if len(data) > self.limits.block_size:
            rep = session.representations.add(data, cf)
            msg = self._block(session, rep, 0, szx_of(self.limits.block_size))
            msg.opt.size2 = len(data)
        else:
            msg = response(Code.CONTENT, data)
            msg.opt.content_format = cf
        return msg

    def notification(self, session: DeviceSession, obs: Observation, dl: Downlink) -> Message:
        """The Observe notification carrying one downlink (first block, with an ETag, if large).

        The caller sends the next large one only once this one's blocks were fetched
        (``session.representations.transfer_open``), so their blocks never mix."""
        msg = self.downlink_response(session, dl)
        msg.token = obs.token
        msg.opt.observe = obs.next_seq()
        return msg
