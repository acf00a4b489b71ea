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

from corem_ingress.adapters.dtls import _binding, cid
from corem_ingress.adapters.dtls.cid_session import CidSession
from corem_ingress.adapters.dtls.records import pack_datagrams, pack_records, split_records


def dtls12_context(method: int, cipher: str) -> SSL.Context:
    """A DTLS 1.2-only context with one suite (client or server method)."""
    ctx = SSL.Context(method)
    ctx.set_min_proto_version(_binding.DTLS1_2_VERSION)
    ctx.set_max_proto_version(_binding.DTLS1_2_VERSION)
    ctx.set_cipher_list(f"{cipher}:@SECLEVEL=0".encode())
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET)
    return ctx


def drain(conn: SSL.Connection) -> bytes:
    """All that a memory-BIO connection has written."""
    out = b""
    while True:
        try:
            chunk = conn.bio_read(65536)
        except SSL.WantReadError:
            return out
        if not chunk:
            return out
        out += chunk


def connected_pair(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> tuple[SSL.Connection, SSL.Connection]:
    """Two plain OpenSSL connections (server, client) with their handshake done over
    memory BIOs: the reference the CID record layer is tested and measured against."""
    server, client = SSL.Connection(server_ctx, None), SSL.Connection(client_ctx, None)
    server.set_accept_state()
    client.set_connect_state()
    for conn in (server, client):
        _binding.set_mtu(conn, 1252)  # a memory BIO has no MTU to query
    fed = {client: True, server: False}  # a memory BIO read before any input is an EOF
    for _ in range(20):  # bounded
        for conn, other in ((client, server), (server, client)):
            if fed[conn]:
                with contextlib.suppress(SSL.WantReadError):
                    conn.do_handshake()
            data = drain(conn)
            if data:
                other.bio_write(data)
                fed[other] = True
    for conn in (client, server):
        conn.do_handshake()  # raises if not done
    return server, client


def psk_context(identity: bytes, key: bytes, cipher: str = "PSK-AES128-CCM8") -> SSL.Context:
    ctx = dtls12_context(SSL.DTLS_CLIENT_METHOD, cipher)
    _binding.set_psk_client_callback(ctx, lambda conn, hint: (identity, key))
    _offer_cid(ctx)
    return ctx


def _offer_cid(ctx: SSL.Context) -> None:
    """The RFC 9146 extension, offered by a ``Client`` that asks for a CID (the others
    send none: their connections carry no app data)."""
    _binding.add_client_extension(ctx, cid.EXT_CONNECTION_ID, _cid_parse, _cid_add)


def _cid_add(conn: SSL.Connection) -> bytes | None:
    client = conn.get_app_data()
    if not isinstance(client, Client) or client.cid_request is None:
        return None
    return cid.cid_extension(client.cid_request)


def _cid_parse(conn: SSL.Connection, data: bytes) -> bool:
    client = conn.get_app_data()
    value = cid.parse_cid_extension(data)
    if not isinstance(client, Client) or client.cid_request is None or value is None:
        return False  # the server answered an extension we did not send
    if value or client.cid_request:
        client.cid = CidSession(peer_cid=value, own_cid=client.cid_request)
    return True


def cert_context(
    cert_file: str, key_file: str, ca_file: str | None, cipher: str = "ECDHE-ECDSA-AES128-CCM8"
) -> SSL.Context:
    ctx = dtls12_context(SSL.DTLS_CLIENT_METHOD, cipher)
    ctx.use_certificate_file(cert_file)
    ctx.use_privatekey_file(key_file)
    if ca_file:
        ctx.load_verify_locations(ca_file)
        ctx.set_verify(SSL.VERIFY_PEER, lambda *a: bool(a[-1]))
    _offer_cid(ctx)
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
    """Sans-I/O DTLS client: ``receive(datagram)``, ``outgoing()`` -> datagrams.

    ``cid``: ask for an RFC 9146 Connection ID (these bytes; ``b""`` offers the extension
    but asks the server to send none). Once negotiated, the client's epoch-1 records are
    ``tls12_cid`` records (the same record layer as the server's), its session survives a
    change of source address. ``session``: an earlier connection's ``conn.get_session()``
    to resume (OpenSSL ignores custom extensions on a resumed handshake: no CID then)."""

    def __init__(
        self,
        ctx: SSL.Context,
        mtu: int = 1252,
        *,
        cid: bytes | None = None,
        session: SSL.Session | None = None,
    ) -> None:
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_connect_state()
        if session is not None:
            # Resume (RFC 5246 session id): the ClientHello names the earlier session.
            self.conn.set_session(session)
        if cid is not None:
            self.conn.set_app_data(self)  # for the extension's callbacks
        _binding.set_mtu(self.conn, mtu)
        self.cid_request = cid
        #: The negotiated Connection ID state (None: none was).
        self.cid: CidSession | None = None
        self.mtu = mtu
        self.done = False
        self.failed: Exception | None = None
        self.closed = False
        self.received: list[bytes] = []

    def start(self) -> list[bytes]:
        self._step()
        return self.outgoing()

    def receive(self, datagram: bytes) -> None:
        state = self.cid
        if state is not None and self.done:
            self._receive_cid(state, datagram)
            return
        if state is not None and self._cid_keyed(state):
            datagram = b"".join(
                state.incoming_for_openssl(r) if r[0] == cid.CT_TLS12_CID else r
                for r in cid.split(datagram, len(state.own_cid))
            )
        self.conn.bio_write(datagram)
        self._step()

    def _cid_keyed(self, state: CidSession) -> bool:
        if state.keyed:
            return True
        master = self.conn.master_key()
        suite = cid.SUITE_IDS.get(self.conn.get_cipher_name() or "")
        if not master or suite is None:
            return False
        return state.set_keys(
            suite,
            master,
            self.conn.client_random() or b"",
            self.conn.server_random() or b"",
            client=True,
        )

    def _receive_cid(self, state: CidSession, datagram: bytes) -> None:
        """Our own record layer once the handshake is done (OpenSSL knows no CID)."""
        for rec in cid.split(datagram, len(state.own_cid)):
            result = state.unprotect(rec)
            if result is None:
                continue
            opened, _newer = result
            if opened.content_type == 23:
                self.received.append(opened.payload)
            elif opened.content_type == 21 and opened.payload[1:2] == b"\x00":
                self.closed = True

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
        if self.cid is not None and self.done:
            return [self.cid.protect(23, data)]
        self.conn.send(data)
        return self.outgoing()

    def close(self) -> list[bytes]:
        if self.cid is not None and self.done:
            return [self.cid.protect(21, b"\x01\x00")]
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
            state = self.cid
            if state is not None and self._cid_keyed(state):
                # Our Finished in a tls12_cid record (RFC 9146: from the first record
                # under the new keys).
                records = [
                    r.raw if r.epoch == 0 else state.outgoing_from_openssl(r.raw)
                    for r in split_records(chunk)
                ]
                out.extend(pack_records(records, self.mtu))
            else:
                out.extend(pack_datagrams(chunk, self.mtu))
        return out


class AsyncDtlsClient(asyncio.DatagramProtocol):
    """The in-process client over a real loopback UDP socket, with DTLS retransmission."""

    def __init__(
        self, ctx: SSL.Context, *, cid: bytes | None = None, session: SSL.Session | None = None
    ) -> None:
        self.client = Client(ctx, cid=cid, session=session)
        self.transport: asyncio.DatagramTransport | None = None
        self._remote: tuple[str, int] = ("127.0.0.1", 0)
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
        cid: bytes | None = None,
        session: SSL.Session | None = None,
        local_host: str | None = None,
    ) -> AsyncDtlsClient:
        """Handshake; returns with ``client.done`` or ``client.failed`` set (check them).

        On a timeout the socket is closed before ``TimeoutError`` propagates. With
        ``raise_socket_errors`` a socket error during the handshake (ICMP port unreachable:
        nothing listens on the port) is raised at once as ``OSError``. ``cid``: ask for a
        DTLS Connection ID (``Client``); ``session``: resume an earlier connection's
        session (``client.conn.get_session()`` of one closed with ``close()``).
        ``local_host``: the source address (bench.scale spreads its sessions over
        127.0.0.N, each with its own ephemeral-port range)."""
        loop = asyncio.get_running_loop()
        self = cls(ctx, cid=cid, session=session)
        self._remote = (host, port)
        local = None if local_host is None else (local_host, 0)
        await loop.create_datagram_endpoint(
            lambda: self, remote_addr=(host, port), local_addr=local
        )
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

    async def rebind(self) -> None:
        """A NAT rebinding: go on from a new socket (a new source port), the old one closed.
        Only a session with a Connection ID survives it."""
        old = self.transport
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, remote_addr=self._remote)
        if old is not None:
            old.close()

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
