"""The MQTT-over-TLS listener: accepts sockets, owns the connections, stops within a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import structlog

from corem_ingress import metrics
from corem_ingress.access_gate import AccessGate
from corem_ingress.adapters.mqtt import tls
from corem_ingress.adapters.mqtt.connection import ConnectionConfig
from corem_ingress.adapters.mqtt.protocol import MqttProtocol
from corem_ingress.config import MqttConfig
from corem_ingress.core.causes import Cause
from corem_ingress.core.proxy_protocol import ProxyMode
from corem_ingress.services import Services

log = structlog.get_logger("corem.mqtt")

#: Uplink metrics, labelled once; fed once per batch (see ``stored``).
_UPLINK_OK = metrics.UPLINKS.labels("mqtt", "ok")
_APPEND_SECONDS = metrics.UPLINK_APPEND_SECONDS.labels("mqtt")


class MqttListener:
    name = "mqtt"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.config: MqttConfig = services.config.mqtt
        self.port = self.config.port
        self.tls_context = tls.server_context(self.config)
        self.connection_config = ConnectionConfig(
            max_packet_size=self.config.max_packet_size,
            connect_timeout=self.config.connect_timeout_s,
            max_keepalive=self.config.max_keepalive_s,
            max_inflight=self.config.max_inflight,
        )
        self.gate = AccessGate(services.access, "mqtt", services.clock)
        services.downlinks.takeover_handlers.append(self.taken_over)
        #: Whether connections start with a PROXY header (``mqtt.proxy_protocol``).
        self.proxy_mode = ProxyMode(self.config.proxy_protocol)
        self.batcher = services.stores.uplink_batcher(on_batch_done=self._flush_dirty)
        self._dirty: set[MqttProtocol] = set()
        #: Messages of the current batch Redis took, and the oldest one's submission time.
        self._batch_stored = 0
        self._batch_oldest = 0.0
        self.connections: set[MqttProtocol] = set()
        self._by_device: dict[str, MqttProtocol] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        #: Session-record writes after a connection ends (awaited, bounded, at stop).
        self._background: set[asyncio.Task[None]] = set()
        #: Wills waiting for their MQTT 5 Will Delay Interval (cancelled at stop).
        self._delayed_wills: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Counters for logs/metrics and tests: connect_accepted, connect_refused,
        #: acl_violations, subscribe_denied, protocol_closes, tls_failures, uplinks,
        #: store_failures, downlinks, revocation_closes, takeovers, throttled, tenant_limit,
        #: rate_limited, proxy_refused.
        self.stats: Counter[str] = Counter()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: MqttProtocol(self),
            self.config.host,
            self.config.port,
            backlog=self.config.backlog,
            reuse_address=True,
            reuse_port=self.services.config.reuse_port or None,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info(
            "mqtt.listening",
            host=self.config.host,
            port=self.port,
            client_auth=self.config.client_auth,
            allow_self_signed=self.config.allow_self_signed,
            reuse_port=self.services.config.reuse_port,
        )

    async def stop(self, deadline: float) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._delayed_wills):
            task.cancel()
        # Let accepted messages reach Redis (and their PUBACKs go out) before closing.
        await self.batcher.drain(max(0.0, deadline / 2))
        self._flush_dirty()
        await self.batcher.close()
        for conn in list(self.connections):
            conn.close(Cause.SHUTTING_DOWN)
        if self._background:  # persistent sessions start their expiry now
            await asyncio.wait(list(self._background), timeout=max(0.1, deadline / 4))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout=max(0.1, deadline / 2))
        self._server = None

    # -- called by connections ---------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` beyond its connection (stop() waits for it, bounded)."""
        task = self.loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def delay_will(self, coro: Coroutine[Any, Any, None]) -> None:
        """A will waiting for its delay; a node that stops meanwhile does not store it."""
        task = self.loop.create_task(coro)
        self._delayed_wills.add(task)
        task.add_done_callback(self._delayed_wills.discard)

    def taken_over(self, device_id: str, owner: str) -> None:
        """Take-over order from another node: end this device's session ``owner`` here."""
        node, _, session_id = owner.partition("|")
        conn = self._by_device.get(device_id)
        if node != self.services.node_id or conn is None or conn.session is None:
            return
        if conn.session.session_id == session_id:
            self.count("takeovers")
            conn.close(Cause.TAKEN_OVER)

    def count(self, name: str) -> None:
        self.stats[name] += 1

    def mark_dirty(self, conn: MqttProtocol) -> None:
        """``conn`` has output to send after the current uplink batch (PUBACKs coalesce)."""
        self._dirty.add(conn)

    def stored(self, submitted: float) -> None:
        """One uplink Redis took (``submitted``: its ``time.perf_counter()`` at submission)."""
        if not self._batch_stored or submitted < self._batch_oldest:
            self._batch_oldest = submitted
        self._batch_stored += 1

    def _flush_dirty(self) -> None:
        if self._batch_stored:
            # Counted per batch, not per message: labelled inc + observe per message cost
            # ~2 us, a tenth of the broker's CPU per QoS 0 message. One latency observation
            # per batch: its oldest message's wait, an upper bound for the others.
            _UPLINK_OK.inc(self._batch_stored)
            _APPEND_SECONDS.observe(time.perf_counter() - self._batch_oldest)
            self._batch_stored = 0
        dirty, self._dirty = self._dirty, set()
        for conn in dirty:
            conn.flush()

    def new_session_id(self) -> str:
        return f"mqtt-{self.services.node_id}-{next(self._ids)}"

    def connection_opened(self, conn: MqttProtocol) -> None:
        self.connections.add(conn)

    def connection_closed(self, conn: MqttProtocol) -> None:
        self.connections.discard(conn)
        device_id = conn.device_id
        if device_id is not None and self._by_device.get(device_id) is conn:
            del self._by_device[device_id]

    def holder(self, device_id: str) -> MqttProtocol | None:
        """The connection of ``device_id`` on this node, if any."""
        return self._by_device.get(device_id)

    def claim(self, device_id: str, conn: MqttProtocol) -> None:
        """One session per client id on this node: a new CONNECT takes over (MQTT 3.1.1)."""
        old = self._by_device.get(device_id)
        self._by_device[device_id] = conn
        if old is not None and old is not conn:
            self.count("takeovers")
            old.close(Cause.TAKEN_OVER)
