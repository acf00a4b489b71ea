"""The DTLS transport's per-wake-up work (issue 18): every datagram already queued on the
socket is fed before one pump, and what handlers send during a pump goes out with its final
flush instead of a nested pump. A real loopback UDP socket; the sans-I/O server under the
transport is a recorder (the real one is covered by the rest of tests/coap)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from corem_ingress.adapters.dtls.events import Address, ApplicationData, HandshakeCompleted
from corem_ingress.adapters.dtls.transport import DRAIN_MAX, DtlsTransport
from corem_ingress.core.causes import Cause


class RecordingServer:
    """Echoes each datagram back as ApplicationData; sends are queued like the real one."""

    def __init__(self) -> None:
        self.on_address_changed: Any = None
        self.received: list[bytes] = []
        self.out: list[tuple[bytes, Address]] = []
        self.events: list[Any] = []
        self.closed: list[Address] = []

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.received.append(data)
        if data == b"hello":
            self.events.append(HandshakeCompleted(addr, None, ""))  # type: ignore[arg-type]
        self.events.append(ApplicationData(addr, data))

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self.out = self.out, []
        return out

    def next_event(self) -> Any:
        return self.events.pop(0) if self.events else None

    def next_timer(self, now: float) -> float | None:
        return None

    def send(self, addr: Address, data: bytes) -> bool:
        self.out.append((b"re:" + data, addr))
        return True

    def close(self, addr: Address, cause: Cause) -> bool:
        self.closed.append(addr)
        return True


class Handler:
    def __init__(self) -> None:
        self.transport: DtlsTransport | None = None
        self.data: list[bytes] = []
        self.started: list[Address] = []

    def session_started(self, addr: Address, credential: Any) -> None:
        self.started.append(addr)

    def data_received(self, addr: Address, data: bytes) -> None:
        self.data.append(data)
        assert self.transport is not None
        self.transport.send(addr, data)

    def session_closed(self, addr: Address, cause: Cause, established: bool, detail: str) -> None:
        pass


class Refusing:
    def source_blocked(self, ip: str) -> bool:
        return False

    def handshake_started(self, addr: Address) -> None: ...

    def max_sessions_reached(self, addr: Address) -> None: ...

    def handshake_rate_limited(self, addr: Address) -> None: ...

    def pending_handshakes_refused(self, addr: Address) -> None: ...

    def admit(self, addr: Address, credential: Any) -> bool:
        return False

    def closed(self, addr: Address, cause: Cause, established: bool, detail: str) -> None: ...


async def _listening(server: RecordingServer, handler: Handler) -> DtlsTransport:
    transport = DtlsTransport(server, resolver=None, handler=handler)  # type: ignore[arg-type]
    handler.transport = transport
    await transport.open("127.0.0.1", 0)
    return transport


async def _received(client: socket.socket, n: int) -> list[bytes]:
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    for _ in range(n):
        got.append(await asyncio.wait_for(loop.sock_recv(client, 2048), 5))
    return got


async def test_a_burst_queued_on_the_socket_is_fed_in_one_wake_up_and_answered() -> None:
    server, handler = RecordingServer(), Handler()
    transport = await _listening(server, handler)
    pumps = 0
    real_pump = transport._pump

    def counting_pump() -> None:
        nonlocal pumps
        pumps += 1
        real_pump()

    transport._pump = counting_pump  # type: ignore[method-assign]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    try:
        client.connect(("127.0.0.1", transport.port))
        burst = [f"m{i}".encode() for i in range(20)]
        for datagram in burst:  # all queued before the loop runs again
            client.send(datagram)
        answers = await _received(client, len(burst))
        assert answers == [b"re:" + d for d in burst]  # every one, in order
        assert server.received == burst
        assert pumps == 1  # one wake-up, one pump (no nested pump per handler send)
    finally:
        client.close()
        transport.close_transport()


async def test_a_burst_larger_than_the_drain_bound_takes_more_wake_ups() -> None:
    server, handler = RecordingServer(), Handler()
    transport = await _listening(server, handler)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    try:
        client.connect(("127.0.0.1", transport.port))
        burst = [f"m{i}".encode() for i in range(DRAIN_MAX + 5)]
        for datagram in burst:
            client.send(datagram)
        answers = await _received(client, len(burst))
        assert answers == [b"re:" + d for d in burst]
    finally:
        client.close()
        transport.close_transport()


async def test_data_drained_with_a_refused_handshake_is_not_handed_on() -> None:
    """A limit refuses the session whose handshake completed in this batch: the datagram
    that came right behind it (same wake-up) never reaches the CoAP layer."""
    server, handler = RecordingServer(), Handler()
    transport = await _listening(server, handler)
    transport.set_guard(Refusing())
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    try:
        client.connect(("127.0.0.1", transport.port))
        client.send(b"hello")
        client.send(b"request")
        for _ in range(100):
            if len(server.received) == 2:
                break
            await asyncio.sleep(0.01)
        assert server.received == [b"hello", b"request"]
        assert server.closed and handler.started == []
        assert handler.data == []
    finally:
        client.close()
        transport.close_transport()
