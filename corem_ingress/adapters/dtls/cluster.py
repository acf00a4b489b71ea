"""DTLS Connection ID records across nodes, as Californium's cluster does it.

A UDP load balancer routes by address: after a NAT rebinding a device's record may land
on a node that does not hold its session. The CID names the owning node (its first bytes
are the node's tag), so that node forwards the datagram, with the device's address, to
the owner over UDP (the owner's DTLS port, from ``{P}:dtls:cid:nodes``). The owner
authenticates the record as always, moves the session, and sends its answers *back*
through the node the device now talks to, which sends them on from its own socket (the
address the device's NAT expects). Frames between nodes carry an HMAC-SHA256 under a key
the nodes share through Redis: nothing else can make a node speak for a device address.

Frame: ``MAGIC kind iplen ip port datagram hmac16`` (``MAGIC`` is no DTLS content type).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from corem_ingress import metrics
from corem_ingress.adapters.dtls.events import Address
from corem_ingress.store.cid_nodes import CidNodeDirectory

log = structlog.get_logger("corem.dtls")

MAGIC = b"\xcf\xd1"
#: A device's record for the node that owns its session.
TO_OWNER = 1
#: The owner's datagram for the device, to be sent on by the node it talks to.
BACK = 2
_TAG = 16
#: The node directory is read from Redis at most this often on a miss (an unknown tag is
#: one garbage datagram away: it must not cost a Redis call each).
REFRESH_INTERVAL_S = 1.0
#: Frames kept while the directory is being read.
_MAX_WAITING = 64


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    device: Address
    datagram: bytes


def wrap(key: bytes, kind: int, device: Address, datagram: bytes) -> bytes:
    ip = device[0].encode()
    body = MAGIC + bytes([kind, len(ip)]) + ip + device[1].to_bytes(2, "big") + datagram
    return body + hmac.new(key, body, hashlib.sha256).digest()[:_TAG]


def unwrap(key: bytes, data: bytes) -> Frame | None:
    """The frame, or None if it is malformed or its HMAC does not verify."""
    if len(data) < len(MAGIC) + 2 + 2 + _TAG or not data.startswith(MAGIC):
        return None
    body, tag = data[:-_TAG], data[-_TAG:]
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest()[:_TAG], tag):
        return None
    kind, iplen = body[2], body[3]
    pos = 4 + iplen
    if kind not in (TO_OWNER, BACK) or len(body) < pos + 2:
        return None
    try:
        ip = body[4:pos].decode()
    except UnicodeDecodeError:
        return None
    port = int.from_bytes(body[pos : pos + 2], "big")
    return Frame(kind, (ip, port), body[pos + 2 :])


class CidCluster:
    """This node's side: its tag registered, forwarding out, frames in."""

    def __init__(
        self,
        directory: CidNodeDirectory,
        tag: bytes,
        send: Callable[[bytes, Address], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._directory = directory
        self._clock = clock
        self._refreshed_at = -REFRESH_INTERVAL_S
        self._refresh: asyncio.Task[None] | None = None
        #: (tag, frame) forwarded while the directory is read.
        self._waiting: list[tuple[bytes, bytes]] = []
        self.tag = tag
        self._send = send
        self._key: bytes | None = None
        self._advertised: Address | None = None
        #: Node tag -> its address (read from Redis at start and, rate-limited, on a miss).
        self._nodes: dict[bytes, Address] = {}

    async def start(self, advertise: Address) -> None:
        self._key = await self._directory.forward_key()
        previous = await self._directory.register(self.tag, advertise)
        if previous is not None:
            log.warning("dtls.cid_tag_reused", tag=self.tag.hex(), previous=previous)
        self._advertised = advertise
        self._nodes = await self._directory.all()
        self._refreshed_at = self._clock()

    async def stop(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        if self._advertised is not None:
            await self._directory.unregister(self.tag, self._advertised)

    @property
    def ready(self) -> bool:
        return self._key is not None

    def forward(self, datagram: bytes, device: Address, cid: bytes) -> None:
        """A device's CID record for the node named by ``cid``."""
        key = self._key
        if key is None:
            return
        tag = cid[: len(self.tag)]
        node = self._nodes.get(tag)
        if node is not None:
            if node != self._advertised:
                self._send_to_node(wrap(key, TO_OWNER, device, datagram), node)
            return
        # A node that joined since we last looked, or garbage: read the directory again,
        # at most once per interval; the frame waits for it (bounded).
        if self._refresh is None and self._clock() - self._refreshed_at < REFRESH_INTERVAL_S:
            return
        if len(self._waiting) < _MAX_WAITING:
            self._waiting.append((tag, wrap(key, TO_OWNER, device, datagram)))
        if self._refresh is None:
            self._refresh = asyncio.ensure_future(self._refresh_directory())

    async def _refresh_directory(self) -> None:
        try:
            self._nodes = await self._directory.all()
        except Exception as exc:  # Redis down: the device retransmits
            log.debug("dtls.cid_directory_unavailable", error=str(exc))
        finally:
            self._refreshed_at = self._clock()
            self._refresh = None
        waiting, self._waiting = self._waiting, []
        for tag, frame in waiting:
            node = self._nodes.get(tag)
            if node is not None and node != self._advertised:
                self._send_to_node(frame, node)

    def _send_to_node(self, frame: bytes, node: Address) -> None:
        metrics.cid_forwarded("out")
        self._send(frame, node)

    def back(self, device: Address, datagram: bytes) -> bytes:
        """Our datagram for a device that talks to another node: the frame for that node."""
        assert self._key is not None
        return wrap(self._key, BACK, device, datagram)

    def open(self, data: bytes) -> Frame | None:
        frame = None if self._key is None else unwrap(self._key, data)
        if frame is None:
            metrics.cid_forwarded("refused")
        else:
            metrics.cid_forwarded("in" if frame.kind == TO_OWNER else "back")
        return frame
