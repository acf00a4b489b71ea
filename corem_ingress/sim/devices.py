"""Device-side stacks of the simulator: HTTP (keep-alive) and MQTT over TLS.

CoAP/DTLS and LwM2M devices live in their own modules (they need tinydtls/OpenSSL).
Each device records what it saw: acks, refusals, and the moment the broker ended
its session (``closed_at``, wall clock) — the simulator's figures come from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from dataclasses import dataclass

import aiohttp

from corem_ingress.adapters.mqtt import codec
from corem_ingress.sim.fleet import DeviceError


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    #: CA bundle that signs the broker's server certificate (TLS/DTLS).
    server_ca: str | None = None


class HttpDevice:
    """POST /api/v1/devices/{id}/uplink with an API key, over one keep-alive connection.

    The first uplink doubles as the connection (its latency is the connect latency).
    A 401 after a revocation is the end of this device's session.
    """

    delivers_on_connect = True

    def __init__(self, name: str, target: Target, device_id: str, api_key: str) -> None:
        self.name = name
        self._url = f"http://{target.host}:{target.port}/api/v1/devices/{device_id}/uplink"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._session: aiohttp.ClientSession | None = None
        self.closed = asyncio.Event()
        self.closed_at: float | None = None

    async def connect(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, force_close=False),
            timeout=aiohttp.ClientTimeout(total=10),
        )
        await self.send(0)

    async def send(self, seq: int) -> None:
        assert self._session is not None
        body = {"kind": "telemetry", "payload": {"seq": seq, "t": time.time()}}
        try:
            async with self._session.post(self._url, json=body, headers=self._headers) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeviceError("io", exc.__class__.__name__) from None
        if status == 202:
            return
        if status == 401:
            self._closed()
            raise DeviceError("unauthenticated")
        raise DeviceError(f"http_{status}")

    def _closed(self) -> None:
        if not self.closed.is_set():
            self.closed_at = time.time()
            self.closed.set()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def client_tls_context(
    server_ca: str | None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=server_ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


_CONNACK_CAUSES = {
    1: "protocol",
    2: "client_id",
    3: "unavailable",
    4: "bad_password",
    5: "not_authorized",
}


class MqttDevice:
    """MQTT 3.1.1 over TLS: a client certificate or an API key as password; QoS 1 uplinks."""

    delivers_on_connect = False

    def __init__(
        self,
        name: str,
        target: Target,
        device_id: str,
        *,
        tls: ssl.SSLContext,
        api_key: str | None = None,
        qos: int = 1,
        keepalive: int = 60,
    ) -> None:
        self.name = name
        self._target = target
        self._device_id = device_id
        self._tls = tls
        self._api_key = api_key
        self._qos = qos
        self._keepalive = keepalive
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._next_id = 0
        self._connack: asyncio.Future[int] | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._ping_task: asyncio.Task[None] | None = None
        self._closing = False
        self.closed = asyncio.Event()
        self.closed_at: float | None = None
        self.downlinks: list[tuple[str, bytes]] = []

    async def connect(self) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self._target.host,
                    self._target.port,
                    ssl=self._tls,
                    server_hostname="localhost",
                ),
                timeout=10,
            )
        except ssl.SSLError as exc:
            raise DeviceError("tls", exc.reason or "") from None
        except (OSError, TimeoutError) as exc:
            raise DeviceError("io", exc.__class__.__name__) from None
        self._reader, self._writer = reader, writer
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._read_task = asyncio.ensure_future(self._read_loop())
        writer.write(
            codec.encode_connect(
                codec.Connect(
                    protocol_level=4,
                    client_id=self._device_id,
                    clean_session=True,
                    keepalive=self._keepalive,
                    username=self._device_id if self._api_key else None,
                    password=self._api_key.encode() if self._api_key else None,
                )
            )
        )
        try:
            code = await asyncio.wait_for(asyncio.shield(self._connack), timeout=10)
        except (TimeoutError, ConnectionError) as exc:
            await self.close()
            raise DeviceError("no_connack", exc.__class__.__name__) from None
        if code != 0:
            await self.close()
            raise DeviceError(_CONNACK_CAUSES.get(code, f"connack_{code}"))
        self._ping_task = asyncio.ensure_future(self._ping_loop())

    async def send(self, seq: int) -> None:
        if self._writer is None or self.closed.is_set():
            raise DeviceError("closed")
        payload = json.dumps({"seq": seq, "t": time.time()}).encode()
        topic = f"devices/{self._device_id}/up/telemetry"
        if self._qos == 0:
            self._writer.write(codec.encode_publish(topic, payload, 0))
            return
        self._next_id = self._next_id % 65535 + 1
        pid = self._next_id
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[pid] = fut
        self._writer.write(codec.encode_publish(topic, payload, 1, pid))
        try:
            await asyncio.wait_for(fut, timeout=10)
        except TimeoutError:
            raise DeviceError("no_puback") from None
        except ConnectionError:
            raise DeviceError("closed") from None
        finally:
            self._pending.pop(pid, None)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        buf = bytearray()
        try:
            while True:
                chunk = await self._reader.read(4096)
                if not chunk:
                    break
                buf += chunk
                while (f := codec.frame(buf, 1 << 20)) is not None:
                    first, header, total = f
                    body = bytes(buf[header:total])
                    del buf[:total]
                    self._on_packet(first, body)
        except (OSError, ssl.SSLError, codec.ProtocolViolation):
            pass
        finally:
            self._on_closed()

    def _on_packet(self, first: int, body: bytes) -> None:
        ptype = first >> 4
        if ptype == codec.PacketType.CONNACK and self._connack and not self._connack.done():
            self._connack.set_result(body[1])
        elif ptype == codec.PacketType.PUBACK:
            fut = self._pending.get(int.from_bytes(body[:2], "big"))
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif ptype == codec.PacketType.PUBLISH:
            qos = (first >> 1) & 3
            n = int.from_bytes(body[:2], "big")
            topic = body[2 : 2 + n].decode()
            rest = body[2 + n :]
            if qos:
                pid = int.from_bytes(rest[:2], "big")
                rest = rest[2:]
                if self._writer is not None:
                    self._writer.write(codec.encode_ack(codec.PacketType.PUBACK, pid))
            self.downlinks.append((topic, rest))

    def _on_closed(self) -> None:
        if not self.closed.is_set():
            if not self._closing:
                self.closed_at = time.time()
            self.closed.set()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionError("closed before CONNACK"))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("closed"))

    async def _ping_loop(self) -> None:
        while self._writer is not None and not self.closed.is_set():
            await asyncio.sleep(self._keepalive / 2)
            self._writer.write(bytes((codec.PacketType.PINGREQ << 4, 0)))

    async def close(self) -> None:
        self._closing = True
        if self._ping_task is not None:
            self._ping_task.cancel()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                if not self.closed.is_set():
                    self._writer.write(bytes((codec.PacketType.DISCONNECT << 4, 0)))
                self._writer.close()
                await asyncio.wait_for(self._writer.wait_closed(), timeout=2)
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._read_task
