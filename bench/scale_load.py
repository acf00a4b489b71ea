"""Load-generator process of ``bench.scale``: holds one slice of the idle devices.

    python -m bench.scale_load --role mqtt|dtls --spec FILE --source 127.0.0.N --deadline S

Run by ``bench.scale`` (never by hand): it reads its devices from ``--spec`` (a JSON list),
connects them with bounded concurrency from the loopback source address ``--source``
(each address has its own ephemeral-port range), prints JSON progress lines, then holds
the sessions and answers commands on stdin (one per line):

* ``status``: ``{"alive": n}``, the sessions still up;
* ``ping SECONDS``: one keep-alive per session, spread over SECONDS (MQTT: PINGREQ;
  DTLS: a CoAP ping, an empty CON the broker answers with RST), then
  ``{"pinged": n, "answered": m, "ping_s": s}``.

The MQTT clients are lean on purpose, so that 100,000 fit on this machine beside the
broker: one pyOpenSSL ``Connection`` over memory BIOs per device (``SSL_MODE_RELEASE_BUFFERS``,
one shared client context, the device's certificate and key set per connection) under a
plain asyncio ``Protocol``; asyncio's own TLS layer would allocate a 256 KiB read buffer per
connection (25 GB for 100,000). The DTLS clients are the simulator's pyOpenSSL DTLS client.
The clients' memory is not in any figure: only the broker's is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from OpenSSL import SSL, crypto

from corem_ingress.adapters.mqtt import codec

#: Linux: bind() picks the source port at connect(), per destination (no 28k global cap).
IP_BIND_ADDRESS_NO_PORT = 24
PINGREQ = b"\xc0\x00"
_CONNACK, _PINGRESP = 0x20, 0xD0


def emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def raise_nofile() -> int:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def mqtt_client_context() -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    # No server verification: the load generator's CPU goes into the broker's handshakes.
    ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


class MqttIdleClient(asyncio.Protocol):
    """One device: mTLS handshake, MQTT 3.1.1 CONNECT, then idle (PINGREQ on demand)."""

    __slots__ = (
        "_buf",
        "_connect",
        "closed",
        "conn",
        "connack",
        "handshaken",
        "pongs",
        "transport",
    )

    def __init__(self, ctx: SSL.Context, cert: Any, key: Any, connect: bytes) -> None:
        self.conn = SSL.Connection(ctx, None)
        self.conn.use_certificate(cert)
        self.conn.use_privatekey(key)
        self.conn.set_connect_state()
        self._connect = connect
        self._buf = b""
        self.transport: asyncio.Transport | None = None
        self.handshaken = False
        self.closed = False
        self.pongs = 0
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        with contextlib.suppress(SSL.WantReadError):
            self.conn.do_handshake()
        self._flush()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        try:
            conn.bio_write(data)
            if not self.handshaken:
                try:
                    conn.do_handshake()
                except SSL.WantReadError:
                    self._flush()
                    return
                self.handshaken = True
                conn.send(self._connect)
            while True:
                try:
                    self._plain(conn.recv(4096))
                except SSL.WantReadError:
                    break
        except SSL.Error as exc:
            self._fail(f"tls: {exc.__class__.__name__}")
            return
        self._flush()

    def _plain(self, chunk: bytes) -> None:
        buf = self._buf + chunk
        while len(buf) >= 2:
            length, shift, i = 0, 0, 1
            while i < len(buf):
                length |= (buf[i] & 0x7F) << shift
                shift += 7
                i += 1
                if not buf[i - 1] & 0x80:
                    break
            else:
                break
            if len(buf) < i + length:
                break
            kind = buf[0] & 0xF0
            if kind == _CONNACK and not self.connack.done():
                self.connack.set_result(buf[i + 1])
            elif kind == _PINGRESP:
                self.pongs += 1
            buf = buf[i + length :]
        self._buf = buf

    def _flush(self) -> None:
        out = b""
        while True:
            try:
                out += self.conn.bio_read(65536)
            except SSL.WantReadError:
                break
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def _fail(self, cause: str) -> None:
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(cause))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.connack.done():
            self.connack.set_exception(ConnectionError("closed"))

    def ping(self) -> None:
        if self.closed:
            return
        try:
            self.conn.send(PINGREQ)
        except SSL.Error:
            return
        self._flush()


async def open_mqtt(
    item: list[Any], ctx: SSL.Context, source: str, keepalive: int, timeout: float
) -> MqttIdleClient:
    device_id, cert_pem, key_pem, port = item
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cert = crypto.load_certificate(crypto.FILETYPE_PEM, cert_pem.encode())
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem.encode())
    connect = codec.encode_connect(
        codec.Connect(
            protocol_level=4,
            client_id=device_id,
            clean_session=True,
            keepalive=keepalive,
            username=None,
            password=None,
        )
    )
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, ("127.0.0.1", int(port)))
            client = MqttIdleClient(ctx, cert, key, connect)
            await loop.create_connection(lambda: client, sock=sock)
            code = await client.connack
    except BaseException:
        sock.close()
        raise
    if code != 0:
        if client.transport is not None:
            client.transport.abort()
        raise ConnectionError(f"connack_{code}")
    return client


class DtlsIdle:
    """One DTLS session (the simulator's client) and its CoAP pings."""

    __slots__ = ("client", "mid")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.mid = 0

    @property
    def alive(self) -> bool:
        c = self.client.client
        return bool(c.done and not c.closed and c.failed is None)

    def ping(self) -> None:
        if not self.alive:
            return
        self.mid = (self.mid + 1) & 0xFFFF
        self.client.client.received.clear()
        self.client.send(b"\x40\x00" + self.mid.to_bytes(2, "big"))  # CON, code 0.00

    def answered(self) -> bool:
        return any(d[:1] == b"\x70" for d in self.client.client.received)  # RST


async def open_dtls(item: list[Any], source: str, timeout: float) -> DtlsIdle:
    from corem_ingress.sim.dtls_client import AsyncDtlsClient, psk_context

    identity, psk_hex, port = item
    ctx = psk_context(identity.encode(), bytes.fromhex(psk_hex))
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    c = await AsyncDtlsClient.connect(ctx, int(port), timeout=timeout, local_host=source)
    if not c.client.done:
        c.close()
        raise ConnectionError("handshake_failed")
    return DtlsIdle(c)


async def hold(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    spec: list[list[Any]] = json.loads(Path(args.spec).read_text())
    end = loop.time() + args.deadline
    held: list[Any] = []
    errors: dict[str, int] = {}
    done = 0
    sem = asyncio.Semaphore(args.concurrency)
    ctx = mqtt_client_context()
    t0 = time.monotonic()

    async def one(item: list[Any]) -> None:
        nonlocal done
        async with sem:
            left = end - loop.time()
            cause = ""
            if left <= 1:
                cause = "deadline"
            else:
                try:
                    if args.role == "mqtt":
                        held.append(
                            await open_mqtt(item, ctx, args.source, args.keepalive, min(60, left))
                        )
                    else:
                        held.append(await open_dtls(item, args.source, min(30, left)))
                except TimeoutError:
                    cause = "timeout"
                except Exception as exc:  # counted by kind; the run goes on
                    cause = str(exc) if isinstance(exc, ConnectionError) else type(exc).__name__
            if cause:
                errors[cause] = errors.get(cause, 0) + 1
            done += 1
            if done % 1000 == 0:
                emit({"progress": done, "held": len(held)})

    await asyncio.gather(*(one(item) for item in spec))
    connect_s = round(time.monotonic() - t0, 2)
    emit({"done": True, "held": len(held), "errors": errors, "connect_s": connect_s})
    spec.clear()

    def alive(h: Any) -> bool:
        return not h.closed if args.role == "mqtt" else bool(h.alive)

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        words = line.split()
        if words == [b"status"]:
            emit({"alive": sum(1 for h in held if alive(h))})
        elif words[:1] == [b"ping"]:
            emit(await ping_all(held, float(words[1]), args.role))
    os._exit(0)  # the sessions end with the process; no orderly closes needed


async def ping_all(held: list[Any], seconds: float, role: str) -> dict[str, Any]:
    """One keep-alive per session, paced evenly over ``seconds``; bounded by it + 10 s."""
    t0 = time.monotonic()
    live = [h for h in held if (not h.closed if role == "mqtt" else h.alive)]
    before = sum(h.pongs for h in live) if role == "mqtt" else 0
    step = 200
    for i in range(0, len(live), step):
        for h in live[i : i + step]:
            h.ping()
        due = t0 + seconds * min(1.0, (i + step) / max(1, len(live)))
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    sent_s = time.monotonic() - t0
    end = time.monotonic() + 10

    def answered() -> int:
        if role == "mqtt":
            return sum(h.pongs for h in live) - before
        return sum(1 for h in live if h.answered())

    while answered() < len(live) and time.monotonic() < end:
        await asyncio.sleep(0.2)
    return {"pinged": len(live), "answered": answered(), "ping_s": round(sent_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=["mqtt", "dtls"], required=True)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--source", default="127.0.0.1")
    ap.add_argument("--deadline", type=float, default=120.0)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--keepalive", type=int, default=3600)
    args = ap.parse_args()
    from corem_ingress import logs

    logs.configure("json", "error")
    warnings.simplefilter("ignore", DeprecationWarning)  # pyOpenSSL X509/PKey objects
    raise_nofile()
    asyncio.run(hold(args))


if __name__ == "__main__":
    main()
