"""An in-process pyOpenSSL DTLS 1.2 client (memory BIOs): the simulator's OpenSSL device side.

``Client`` is sans-I/O (feed datagrams in, take datagrams out); ``AsyncDtlsClient``
runs it over a real UDP socket with DTLS retransmission. The CoAP certificate
devices of ``corem-ingress simulate``, the tests and bench/ (coap, scale) use it.
A close_notify from the server shows as ``client.closed``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from OpenSSL import SSL

from corem_ingress.adapters.dtls import _binding
from corem_ingress.adapters.dtls.records import pack_datagrams


def psk_context(identity: bytes, key: bytes, cipher: str = "PSK-AES128-CCM8") -> SSL.Context:
    ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    ctx.set_min_proto_version(_binding.DTLS1_2_VERSION)
    ctx.set_max_proto_version(_binding.DTLS1_2_VERSION)
    ctx.set_cipher_list(f"{cipher}:@SECLEVEL=0".encode())
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET)
    _binding.set_psk_client_callback(ctx, lambda conn, hint: (identity, key))
    return ctx


def cert_context(
    cert_file: str, key_file: str, ca_file: str | None, cipher: str = "ECDHE-ECDSA-AES128-CCM8"
) -> SSL.Context:
    ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    ctx.set_min_proto_version(_binding.DTLS1_2_VERSION)
    ctx.set_max_proto_version(_binding.DTLS1_2_VERSION)
    ctx.set_cipher_list(f"{cipher}:@SECLEVEL=0".encode())
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET)
    ctx.use_certificate_file(cert_file)
    ctx.use_privatekey_file(key_file)
    if ca_file:
        ctx.load_verify_locations(ca_file)
        ctx.set_verify(SSL.VERIFY_PEER, lambda *a: bool(a[-1]))
    return ctx


def failure_reason(exc: BaseException | None) -> str:
    """What OpenSSL said about a failed handshake, in its words (e.g. "tlsv1 alert decrypt
    error": the server's alert)."""
    if exc is None:
        return "no reason given"
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [str(e[2]) for e in exc.args[0] if len(e) > 2 and e[2]]
        if reasons:
            return "; ".join(reasons)
    return f"{type(exc).__name__}: {exc}"


class Client:
    """Sans-I/O DTLS client: ``receive(datagram)``, ``outgoing()`` -> datagrams."""

    def __init__(self, ctx: SSL.Context, mtu: int = 1252) -> None:
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_connect_state()
        _binding.set_mtu(self.conn, mtu)
        self.mtu = mtu
        self.done = False
        self.failed: Exception | None = None
        self.closed = False
        self.received: list[bytes] = []

    def start(self) -> list[bytes]:
        self._step()
        return self.outgoing()

    def receive(self, datagram: bytes) -> None:
        self.conn.bio_write(datagram)
        self._step()

    def _step(self) -> None:
        if not self.done and self.failed is None:
            try:
                self.conn.do_handshake()
                self.done = True
            except SSL.WantReadError:
                return
            except SSL.Error as exc:
                self.failed = exc
                return
        while True:
            try:
                self.received.append(self.conn.recv(65536))
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:
                self.closed = True
                return
            except SSL.Error as exc:
                self.failed = exc
                return

    def send(self, data: bytes) -> list[bytes]:
        self.conn.send(data)
        return self.outgoing()

    def close(self) -> list[bytes]:
        with contextlib.suppress(SSL.Error):
            self.conn.shutdown()
        return self.outgoing()

    def outgoing(self) -> list[bytes]:
        out: list[bytes] = []
        while True:
            try:
                chunk = self.conn.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out.extend(pack_datagrams(chunk, self.mtu))
        return out


class AsyncDtlsClient(asyncio.DatagramProtocol):
    """The in-process client over a real loopback UDP socket, with DTLS retransmission."""

    def __init__(self, ctx: SSL.Context) -> None:
        self.client = Client(ctx)
        self.transport: asyncio.DatagramTransport | None = None
        self.changed = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        #: A socket error (e.g. ICMP port unreachable: nothing listens there).
        self.error: OSError | None = None

    @classmethod
    async def connect(
        cls,
        ctx: SSL.Context,
        port: int,
        *,
        timeout: float = 15.0,  # noqa: ASYNC109
        host: str = "127.0.0.1",
        raise_socket_errors: bool = False,
    ) -> AsyncDtlsClient:
        """Handshake; returns with ``client.done`` or ``client.failed`` set (check them).

        On a timeout the socket is closed before ``TimeoutError`` propagates. With
        ``raise_socket_errors`` a socket error during the handshake (ICMP port unreachable:
        nothing listens on the port) is raised at once as ``OSError``."""
        loop = asyncio.get_running_loop()
        self = cls(ctx)
        await loop.create_datagram_endpoint(lambda: self, remote_addr=(host, port))
        self._send(self.client.start())
        self._arm()
        try:
            async with asyncio.timeout(timeout):
                while not (self.client.done or self.client.failed or self.client.closed):
                    if self.error is not None and raise_socket_errors:
                        raise self.error
                    await self.wait_change()
        except BaseException:
            self.close()
            raise
        return self

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError):
            self.error = exc
            self.changed.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client.receive(data)
        self._send(self.client.outgoing())
        self.changed.set()

    def _send(self, datagrams: list[bytes]) -> None:
        if self.transport is not None:
            for d in datagrams:
                self.transport.sendto(d)

    def _arm(self) -> None:
        if self.client.done or self.client.failed:
            return
        timeout = self.client.conn.DTLSv1_get_timeout()
        delay = 0.2 if timeout is None else max(0.01, timeout)
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        if self.client.done or self.client.failed:
            return
        try:
            self.client.conn.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self.client.failed = exc
            self.changed.set()
            return
        self._send(self.client.outgoing())
        self._arm()

    async def wait_change(self) -> None:
        await self.changed.wait()
        self.changed.clear()

    def send(self, data: bytes) -> None:
        self._send(self.client.send(data))

    async def recv(self, timeout: float = 15.0) -> bytes:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not self.client.received:
                if self.client.closed or self.client.failed:
                    raise ConnectionError("session closed")
                await self.wait_change()
        return self.client.received.pop(0)

    async def wait_closed(self, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not (self.client.closed or self.client.failed):
                await self.wait_change()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self._send(self.client.close())
            self.transport.close()
            self.transport = None
