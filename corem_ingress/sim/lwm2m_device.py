"""A simulated LwM2M client over CoAP/DTLS (PSK or certificate, OpenSSL's DTLS 1.2 client).

It drives ``adapters.lwm2m.client_objects.SimulatedClient`` (objects 1, 3, 3303): it
registers, updates, answers the server's Read / Write / Execute / Discover / Observe /
Cancel-Observe, sends notifications when its temperature changes, and LwM2M 1.1 Send
(``POST /dp``). ``send(seq)`` (the fleet runner's one message) changes the temperature
and notifies every observer of it, or sends it with Send when nothing observes it.

The CoAP part is a small client+server over one DTLS session: confirmable requests with
retransmission, piggybacked answers to the server's requests, NON notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiocoap import ACK, CON, NON, RST, Message
from aiocoap.error import UnparsableMessage
from aiocoap.numbers.codes import Code

from corem_ingress.adapters.lwm2m.coap import code_of, dotted
from corem_ingress.lwm2m.bootstrap import SECURITY_MODE_PSK, BootstrapClient, BootstrappedServer
from corem_ingress.lwm2m.client_objects import (
    FirmwareApplying,
    FirmwareChanged,
    FirmwareUriWritten,
    LifetimeChanged,
    SimulatedClient,
    UpdateTriggered,
)
from corem_ingress.lwm2m.model import Lwm2mPath
from corem_ingress.sim.devices import Target
from corem_ingress.sim.fleet import DeviceError

_METHOD_NAMES = {int(Code.GET): "GET", int(Code.PUT): "PUT", int(Code.POST): "POST"}
_METHOD_NAMES[int(Code.DELETE)] = "DELETE"
_METHOD_NAMES[int(Code.FETCH)] = "FETCH"
_METHOD_NAMES[int(Code.iPATCH)] = "iPATCH"
CF_LINK_FORMAT = 40
REQUEST_TIMEOUT_S = 10.0
#: Least wait between two registration refreshes (one that failed is retried after it; a
#: tenth of the lifetime when that is shorter).
REFRESH_RETRY_S = 1.0
ACK_TIMEOUT_S = 1.0


@dataclass
class _Observed:
    path: Lwm2mPath
    uri_path: tuple[str, ...]
    accept: int | None
    seq: int = 0
    #: Observe-Composite: the paths observed together (``path`` is the root).
    paths: tuple[Lwm2mPath, ...] = ()

    def covers(self, changed: Lwm2mPath) -> bool:
        return any(p.is_prefix_of(changed) for p in self.paths or (self.path,))


class PlainUdp(asyncio.DatagramProtocol):
    """DEV ONLY NoSec: the same send/recv/close surface as the DTLS client, without DTLS."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    @classmethod
    async def connect(cls, host: str, port: int) -> PlainUdp:
        self = cls()
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, remote_addr=(host, port))
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait(data)

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.sendto(data)

    async def recv(self, timeout: float = 15.0) -> bytes:  # noqa: ASYNC109
        if self.transport is None:
            raise ConnectionError("closed")
        async with asyncio.timeout(timeout):
            return await self.received.get()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class CoapDtlsChannel:
    """CoAP client and server on one DTLS session (``corem_ingress.sim.dtls_client``)."""

    def __init__(self, dtls: Any, handler: Any) -> None:
        self.dtls = dtls
        self._handler = handler  # (Message) -> Message: answers a server request
        self._mid = random.randrange(0x10000)
        self._acks: dict[int, asyncio.Future[Message]] = {}
        self._responses: dict[bytes, asyncio.Future[Message]] = {}
        self._answered: dict[int, bytes] = {}
        self.closed = asyncio.Event()
        self.closed_at: float | None = None
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.ensure_future(self._read())

    def _next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def _send(self, msg: Message) -> None:
        if not self.closed.is_set():
            self.dtls.send(msg.encode())

    async def _read(self) -> None:
        try:
            while True:
                try:
                    data = await self.dtls.recv(timeout=3600)
                except TimeoutError:
                    continue
                self._received(data)
        except (ConnectionError, OSError):
            pass
        finally:
            if not self.closed.is_set():
                self.closed_at = time.time()
                self.closed.set()
            for fut in [*self._acks.values(), *self._responses.values()]:
                if not fut.done():
                    fut.set_exception(ConnectionError("session closed"))

    def _received(self, data: bytes) -> None:
        try:
            msg = Message.decode(data)
        except UnparsableMessage:
            return
        if msg.mtype in (ACK, RST):
            fut = self._acks.pop(msg.mid, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            if msg.mtype == ACK and msg.code.is_response():
                self._response(msg)
            return
        if msg.code.is_request():
            if msg.mtype == CON and msg.mid in self._answered:  # a retransmission
                self.dtls.send(self._answered[msg.mid])
                return
            answer: Message = self._handler(msg)
            answer.token = msg.token
            answer.mtype = ACK if msg.mtype == CON else NON
            answer.mid = msg.mid if msg.mtype == CON else self._next_mid()
            raw = answer.encode()
            if msg.mtype == CON:
                self._answered[msg.mid] = raw
                while len(self._answered) > 64:
                    self._answered.pop(next(iter(self._answered)))
            self._send(answer)
            return
        if msg.code.is_response():
            if msg.mtype == CON:
                self._send(Message(mtype=ACK, mid=msg.mid, code=Code.EMPTY))
            self._response(msg)

    def _response(self, msg: Message) -> None:
        fut = self._responses.pop(msg.token, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def request(self, msg: Message, *, timeout_s: float = REQUEST_TIMEOUT_S) -> Message:
        """A confirmable request with retransmission; the server's response."""
        if self.closed.is_set():
            raise DeviceError("closed")
        loop = asyncio.get_running_loop()
        msg.token = random.getrandbits(64).to_bytes(8, "big")
        msg.mtype = CON
        msg.mid = self._next_mid()
        response: asyncio.Future[Message] = loop.create_future()
        self._responses[msg.token] = response
        try:
            async with asyncio.timeout(timeout_s):
                delay = ACK_TIMEOUT_S
                while True:
                    ack: asyncio.Future[Message] = loop.create_future()
                    self._acks[msg.mid] = ack
                    self._send(msg)
                    done, _ = await asyncio.wait({ack, response}, timeout=delay)
                    if response in done or ack in done:
                        break
                    delay *= 2
                if ack.done() and not ack.exception() and ack.result().mtype == RST:
                    raise DeviceError("reset")
                return await response
        except TimeoutError:
            raise DeviceError("timeout") from None
        except ConnectionError:
            raise DeviceError("closed") from None
        finally:
            self._responses.pop(msg.token, None)
            self._acks.pop(msg.mid, None)

    def notify(self, token: bytes, msg: Message) -> None:
        msg.token = token
        msg.mtype = NON
        msg.mid = self._next_mid()
        self._send(msg)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.dtls.close()


class Lwm2mDevice:
    """A ``SimDevice``: one LwM2M client on its own DTLS session."""

    delivers_on_connect = False

    def __init__(
        self,
        name: str,
        target: Target,
        *,
        endpoint: str,
        psk_identity: str | None = None,
        psk: bytes | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        version: str = "1.1",
        lifetime_s: int = 300,
        clock: Any = time.time,
        nosec: bool = False,
        binding: str = "U",
        firmware_update: bool = False,
        firmware_result: int = 1,
        pull_block_size: int = 1024,
    ) -> None:
        self.name = name
        self.target = target
        self.client = SimulatedClient(
            endpoint,
            clock=clock,
            version=version,
            lifetime_s=lifetime_s,
            binding=binding,
            firmware_update=firmware_update,
            firmware_result=firmware_result,
        )
        #: Firmware pull: the Block2 size asked for; blocks fetched (for tests).
        self._pull_szx = pull_block_size.bit_length() - 5
        self.pulled_blocks = 0
        self.pull_error: str | None = None
        #: Block1 reassembly of a server's block-wise write: (uri, bytes so far).
        self._block1: tuple[tuple[str, ...], bytearray] | None = None
        self.pushed_blocks = 0
        self._psk = (psk_identity, psk)
        self._cert = (cert_file, key_file)
        #: DEV ONLY: plain UDP to the server's NoSec port (``lwm2m.allow_nosec``).
        self.nosec = nosec
        self.channel: CoapDtlsChannel | None = None
        self.location: tuple[str, ...] = ()
        self.observed: dict[bytes, _Observed] = {}
        #: Every server request seen, as (method, "/path", observe option) (for tests).
        self.requests: list[tuple[str, str, int | None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = asyncio.Event()
        self.closed_at: float | None = None
        #: Event-loop time of the last Register or Update the server accepted.
        self._refreshed_at = 0.0
        #: Set when the lifetime changed (a Write of /1/0/1): the refresh is due sooner.
        self._lifetime_changed = asyncio.Event()
        #: While bootstrapping: the server's Bootstrap-Delete/Write/Finish go here.
        self._bootstrap: BootstrapClient | None = None
        self._bootstrap_done = asyncio.Event()
        self.bootstrapped: BootstrappedServer | None = None

    # -- session -----------------------------------------------------------------------------
    def _context(self) -> Any:
        from corem_ingress.sim import dtls_client

        identity, psk = self._psk
        if identity is not None and psk is not None:
            return dtls_client.psk_context(identity.encode(), psk)
        cert, key = self._cert
        if cert is None or key is None:
            raise DeviceError("config", "a PSK or a certificate is needed")
        return dtls_client.cert_context(cert, key, self.target.server_ca)

    async def open_session(self) -> None:
        """The DTLS handshake only (tests then send their own Register)."""
        from corem_ingress.sim import dtls_client

        if self.nosec:
            udp = await PlainUdp.connect(self.target.host, self.target.port)
            self.channel = CoapDtlsChannel(udp, self._answer)
            self.channel.start()
            return
        try:
            dtls = await dtls_client.AsyncDtlsClient.connect(
                self._context(), self.target.port, timeout=REQUEST_TIMEOUT_S
            )
        except TimeoutError:
            raise DeviceError("timeout", "DTLS handshake") from None
        if not dtls.client.done:
            dtls.close()
            raise DeviceError("refused", "DTLS handshake")
        self.channel = CoapDtlsChannel(dtls, self._answer)
        self.channel.start()
        watch = asyncio.ensure_future(self._watch(self.channel))
        self._tasks.add(watch)

    async def _watch(self, channel: CoapDtlsChannel) -> None:
        await channel.closed.wait()
        if channel is self.channel and not self.closed.is_set():
            self.closed_at = channel.closed_at
            self.closed.set()

    async def bootstrap(self, *, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        """LwM2M Bootstrap with the PSK given (a psk claim) or the certificate given (of a
        tenant's auto-provisioning CA): ``POST /bs?ep=``, then the server's Delete / Write /
        Finish; the device then holds its own PSK (``self._psk``) or keeps its certificate,
        and keeps the session, over which it registers (``connect`` does both)."""
        self._bootstrap = BootstrapClient()
        self._bootstrap_done.clear()
        if self.channel is None:
            await self.open_session()
        response = await self.request(Code.POST, ("bs",), query=(f"ep={self.client.endpoint}",))
        if response.code != Code.CHANGED:
            raise DeviceError(f"coap_{dotted(response.code)}")
        try:
            await asyncio.wait_for(self._bootstrap_done.wait(), timeout_s)
        except TimeoutError:
            raise DeviceError("timeout", "Bootstrap-Finish") from None
        server = self._bootstrap.server
        self._bootstrap = None
        #: What the bootstrap server wrote (tests compare it with what they expect).
        self.bootstrapped = server
        if server.security_mode == SECURITY_MODE_PSK:
            self._psk = (server.psk_identity, server.psk)
        # Certificate mode: it keeps its certificate and key (no private key is written).

    async def connect(self) -> None:
        if self.channel is None:
            await self.open_session()
        response = await self.register()
        if response.code != Code.CREATED:
            await self.close()
            raise DeviceError(f"coap_{dotted(response.code)}")
        refresh = asyncio.ensure_future(self._keep_registered())
        self._tasks.add(refresh)
        refresh.add_done_callback(self._tasks.discard)

    async def _keep_registered(self) -> None:
        """Update at half the lifetime, as a client must to stay registered; register again
        if the server no longer knows the registration. Before, a run longer than the
        lifetime (300 s, or what an operator wrote to /1/0/1) lost every registration, and
        with it the observations that carry the devices' uplinks."""
        loop = asyncio.get_running_loop()
        while self.channel is not None and not self.closed.is_set():
            lifetime = self.client.lifetime_s
            due = self._refreshed_at + lifetime / 2
            least = min(REFRESH_RETRY_S, lifetime / 10)  # a short lifetime leaves little slack
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lifetime_changed.wait(), max(due - loop.time(), least))
            self._lifetime_changed.clear()
            if loop.time() < self._refreshed_at + self.client.lifetime_s / 2:
                continue  # not due yet (the lifetime changed), or an Update refreshed it
            with contextlib.suppress(DeviceError):
                if self.location and (await self.update()).code != Code.NOT_FOUND:
                    continue
                await self.register()

    async def request(
        self,
        method: Any,
        uri_path: Sequence[str],
        *,
        query: Sequence[str] = (),
        payload: bytes = b"",
        content_format: int | None = None,
    ) -> Message:
        if self.channel is None:
            raise DeviceError("closed")
        msg = Message(code=method, payload=payload)
        msg.opt.uri_path = tuple(uri_path)
        if query:
            msg.opt.uri_query = tuple(query)
        if content_format is not None:
            msg.opt.content_format = content_format
        return await self.channel.request(msg)

    # -- registration interface --------------------------------------------------------------
    async def register(
        self, *, query: Sequence[str] | None = None, payload: bytes | None = None
    ) -> Message:
        response = await self.request(
            Code.POST,
            ("rd",),
            query=self.client.register_query() if query is None else query,
            payload=self.client.register_payload() if payload is None else payload,
            content_format=CF_LINK_FORMAT,
        )
        if response.code == Code.CREATED:
            self.location = tuple(response.opt.location_path)
            self._refreshed_at = asyncio.get_running_loop().time()
        return response

    async def update(
        self,
        *,
        lifetime_s: int | None = None,
        objects: bool = False,
        location: Sequence[str] | None = None,
    ) -> Message:
        query = [f"lt={lifetime_s}"] if lifetime_s is not None else []
        response = await self.request(
            Code.POST,
            self.location if location is None else location,
            query=query,
            payload=self.client.register_payload() if objects else b"",
            content_format=CF_LINK_FORMAT if objects else None,
        )
        if response.code == Code.CHANGED:
            self._refreshed_at = asyncio.get_running_loop().time()
        return response

    async def deregister(self) -> Message:
        response = await self.request(Code.DELETE, self.location)
        if response.code == Code.DELETED:
            self.location = ()
        return response

    async def send_dp(self, paths: Sequence[str] = ("/3303/0",)) -> Message:
        cf, body = self.client.send_payload(paths)
        return await self.request(Code.POST, ("dp",), payload=body, content_format=cf)

    # -- answering the server ----------------------------------------------------------------
    def _answer(self, msg: Message) -> Message:
        method = _METHOD_NAMES.get(int(msg.code), "?")
        uri = tuple(msg.opt.uri_path)
        observe = msg.opt.observe
        block1 = msg.opt.block1
        if block1 is not None:
            step = self._reassemble(uri, msg)
            if step is not None:
                return step
            assert self._block1 is not None  # the last block: the whole body
            msg.payload = bytes(self._block1[1])
            self._block1 = None
        self.requests.append((method, "/" + "/".join(uri), observe))
        if self._bootstrap is not None:
            code = self._bootstrap.handle(method, uri, bytes(msg.payload))
            if self._bootstrap.finished:
                self._bootstrap_done.set()
            return Message(code=code_of(code))
        accept = None if msg.opt.accept is None else int(msg.opt.accept)
        cf = None if msg.opt.content_format is None else int(msg.opt.content_format)
        answer = self.client.handle(
            method,
            uri,
            uri_query=tuple(msg.opt.uri_query),
            content_format=cf,
            accept=accept,
            payload=bytes(msg.payload),
        )
        out = Message(code=code_of(answer.code), payload=answer.payload)
        if answer.content_format is not None:
            out.opt.content_format = answer.content_format
        if method == "GET" and observe == 0 and answer.code == "2.05":
            path = Lwm2mPath.parse("/" + "/".join(uri))
            obs = _Observed(path, uri, accept)
            self.observed[bytes(msg.token)] = obs
            out.opt.observe = obs.seq
        elif method == "FETCH" and observe == 0 and answer.code == "2.05":
            paths = tuple(self.client.composite_paths(cf, bytes(msg.payload)))
            obs = _Observed(Lwm2mPath(), uri, accept, paths=paths)
            self.observed[bytes(msg.token)] = obs
            out.opt.observe = obs.seq
        elif method in ("GET", "FETCH") and observe == 1:
            self.observed.pop(bytes(msg.token), None)
        if block1 is not None:
            out.opt.block1 = (block1.block_number, False, block1.size_exponent)
        self._after_request()
        return out

    def _reassemble(self, uri: tuple[str, ...], msg: Message) -> Message | None:
        """One block of a Block1 write: 2.31 Continue while more come; None on the last
        (``self._block1`` then holds the whole body)."""
        b1 = msg.opt.block1
        size = 1 << (b1.size_exponent + 4)
        if b1.block_number == 0:
            self._block1 = (uri, bytearray())
        if (
            self._block1 is None
            or self._block1[0] != uri
            or len(self._block1[1]) != (b1.block_number * size)
        ):
            self._block1 = None
            return Message(code=Code.REQUEST_ENTITY_INCOMPLETE)
        self._block1[1].extend(msg.payload)
        self.pushed_blocks += 1
        if b1.more:
            answer = Message(code=Code.CONTINUE)
            answer.opt.block1 = (b1.block_number, True, b1.size_exponent)
            return answer
        return None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify_soon(self, paths: Sequence[Lwm2mPath]) -> None:
        """Notify after the answer that caused the change went out."""
        await asyncio.sleep(0)
        self.notify(paths)

    async def _pull(self, uri: str) -> None:
        """Fetch the package from ``coaps://…/fw/<token>`` over this session, with Block2."""
        from urllib.parse import urlsplit

        parts = urlsplit(uri)
        if parts.scheme != "coaps":
            self.client.firmware_download_failed(9)
            self._after_request()
            return
        path = tuple(p for p in parts.path.split("/") if p)
        data, num, szx = bytearray(), 0, self._pull_szx
        try:
            while True:
                msg = Message(code=Code.GET)
                msg.opt.uri_path = path
                msg.opt.block2 = (num, False, szx)
                answer = await self.request_message(msg)
                if answer.code != Code.CONTENT:
                    raise DeviceError(f"coap_{dotted(answer.code)}")
                self.pulled_blocks += 1
                data.extend(answer.payload)
                b2 = answer.opt.block2
                if b2 is None or not b2.more:
                    break
                szx = b2.size_exponent  # the server's block size from now on (RFC 7959 2.4)
                num = len(data) // (1 << (szx + 4))
        except DeviceError as exc:
            self.pull_error = str(exc)
            self.client.firmware_download_failed(4)
            self._after_request()
            return
        self.client.firmware_downloaded(bytes(data))
        self._after_request()

    async def _apply_firmware(self) -> None:
        await asyncio.sleep(0.05)
        self.client.finish_update()
        self._after_request()

    async def request_message(self, msg: Message) -> Message:
        if self.channel is None:
            raise DeviceError("closed")
        return await self.channel.request(msg)

    def _after_request(self) -> None:
        while (event := self.client.next_event()) is not None:
            if isinstance(event, FirmwareChanged):
                self._spawn(self._notify_soon(event.paths))
            elif isinstance(event, FirmwareUriWritten):
                self._spawn(self._pull(event.uri))
            elif isinstance(event, FirmwareApplying):
                self._spawn(self._apply_firmware())
            elif isinstance(event, LifetimeChanged | UpdateTriggered):
                lifetime = event.lifetime_s if isinstance(event, LifetimeChanged) else None
                if lifetime is not None:
                    self._lifetime_changed.set()
                task = asyncio.ensure_future(self._update_quietly(lifetime))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _update_quietly(self, lifetime_s: int | None) -> None:
        with contextlib.suppress(DeviceError):
            await self.update(lifetime_s=lifetime_s)

    def notify(self, changed: Sequence[Lwm2mPath]) -> int:
        """Send a notification to every observation covering a changed path."""
        if self.channel is None:
            return 0
        sent = 0
        for token, obs in list(self.observed.items()):
            if not any(obs.covers(p) for p in changed):
                continue
            if obs.paths:
                answer = self.client.composite_answer(obs.paths, obs.accept)
            else:
                answer = self.client.read(obs.path, obs.accept)
            obs.seq = (obs.seq + 1) % (1 << 24)
            msg = Message(code=code_of(answer.code), payload=answer.payload)
            if answer.content_format is not None:
                msg.opt.content_format = answer.content_format
            msg.opt.observe = obs.seq
            self.channel.notify(token, msg)
            sent += 1
        return sent

    # -- SimDevice -----------------------------------------------------------------------------
    async def send(self, seq: int) -> None:
        if self.channel is None or self.closed.is_set():
            raise DeviceError("closed")
        records = self.client.set_temperature(20.0 + (seq % 20) / 4)
        if self.notify([r.path for r in records]):
            return
        response = await self.send_dp()
        if response.code != Code.CHANGED:
            raise DeviceError(f"coap_{dotted(response.code)}")

    async def close(self) -> None:
        channel = self.channel
        if channel is None:
            return
        if self.location and not channel.closed.is_set():
            with contextlib.suppress(DeviceError, TimeoutError):
                async with asyncio.timeout(2):
                    await self.deregister()
        self.channel = None
        channel.close()
        for task in list(self._tasks):
            task.cancel()


__all__ = ["CoapDtlsChannel", "Lwm2mDevice", "PlainUdp"]
