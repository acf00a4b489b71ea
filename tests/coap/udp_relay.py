"""A loopback UDP relay that plays a NAT (and a load balancer) between a device and the
broker: the device talks to ``port``; the relay forwards from its current upstream socket to
the current node. ``rebind()`` is the NAT mapping expiring: a new upstream socket (a new
source port the broker sees), the old one closed (what the broker sends there is lost),
and optionally another node (the load balancer routes the new address elsewhere).

``rebind_before_cid_datagram = n`` rebinds just before the device's n-th datagram that
opens with a ``tls12_cid`` record (counting from 1), so a test needs no sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

LOOPBACK = "127.0.0.1"


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[bytes] = []
        #: The port each datagram came from (which node answered).
        self.senders: list[int] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        self.senders.append(int(addr[1]))
        self.relay.to_device(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


class Relay(asyncio.DatagramProtocol):
    def __init__(self, target_port: int) -> None:
        self.target: tuple[str, int] = (LOOPBACK, target_port)
        self.front: asyncio.DatagramTransport | None = None
        self.device: Any = None
        self.upstream: _Upstream | None = None
        #: Every upstream socket, in order (the current one last).
        self.upstreams: list[_Upstream] = []
        self.rebind_before_cid_datagram = 0
        self.rebind_to: int | None = None
        self.cid_datagrams = 0
        self.rebinds = 0
        #: Drop the broker's next datagram that opens with a ChangeCipherSpec (its last
        #: handshake flight is lost once).
        self.drop_server_finished = False
        #: What the device sent, as forwarded.
        self.sent_up: list[bytes] = []
        #: A device that comes back from a new port (a reconnection: a new socket) goes to
        #: this node, from a new upstream socket (a reboot behind the load balancer); the
        #: hook, if any, runs first (e.g. the test revokes the device in between).
        self.reconnect_to: int | None = None
        self.before_reconnect: Callable[[], Awaitable[None]] | None = None
        self.reconnects = 0

    async def open(self) -> int:
        loop = asyncio.get_running_loop()
        self.front, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(LOOPBACK, 0))
        await self.new_upstream()
        return int(self.front.get_extra_info("sockname")[1])

    async def open_socket(self) -> asyncio.DatagramTransport:
        """A plain loopback socket of the test's (another device, an attacker)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(LOOPBACK, 0)
        )
        return transport

    async def new_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(
            lambda: _Upstream(self), local_addr=(LOOPBACK, 0)
        )
        self.upstream = proto
        self.upstreams.append(proto)

    def close(self) -> None:
        for up in self.upstreams:
            if up.transport is not None:
                up.transport.close()
        if self.front is not None:
            self.front.close()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.device is not None and addr != self.device and self.reconnect_to is not None:
            self.device = addr
            self.reconnects += 1
            asyncio.get_running_loop().create_task(self._reconnect_then_send(data))
            return
        self.device = addr
        if data[:1] == b"\x19":
            self.cid_datagrams += 1
            if self.cid_datagrams == self.rebind_before_cid_datagram:
                # Synchronously: the socket must exist before this datagram goes on.
                asyncio.get_running_loop().create_task(self._rebind_then_send(data))
                return
        self._send_up(data)

    async def _reconnect_then_send(self, data: bytes) -> None:
        if self.before_reconnect is not None:
            await self.before_reconnect()
        await self.rebind(self.reconnect_to)
        self.reconnect_to = None  # later datagrams of that connection go on as they are
        self._send_up(data)

    async def _rebind_then_send(self, data: bytes) -> None:
        await self.rebind(self.rebind_to)
        self._send_up(data)

    async def rebind(self, target_port: int | None = None) -> None:
        old = self.upstream
        await self.new_upstream()
        if old is not None and old.transport is not None:
            old.transport.close()  # the NAT forgot the old mapping
        if target_port is not None:
            self.target = (LOOPBACK, target_port)
        self.rebinds += 1

    def _send_up(self, data: bytes) -> None:
        assert self.upstream is not None and self.upstream.transport is not None
        self.sent_up.append(data)
        self.upstream.transport.sendto(data, self.target)

    def to_device(self, data: bytes) -> None:
        if self.drop_server_finished and data[:1] == b"\x14":
            self.drop_server_finished = False
            return
        if self.front is not None and self.device is not None:
            self.front.sendto(data, self.device)
