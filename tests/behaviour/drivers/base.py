"""What the behaviour suite asks of a transport.

A ``Driver`` starts a node with its listener, provisions devices in the node's Redis,
revokes them, and connects real clients; the ``Session`` a connection opens sends
uplinks and notices when the server ends it. Every answer is the protocol's own, written
as a short string (``"HTTP 401"``, ``"CONNACK 5"``, ``"5.03"``, ``"DTLS alert"``) so that
the suite compares them and the Redis-killed scenario counts them.

A new transport (MQTT 5, ...) is one ``Driver`` subclass: the suite does not change.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from corem_ingress.app import Node
from corem_ingress.core.causes import Cause
from corem_ingress.core.identity import CredentialKind
from corem_ingress.store.registry import Registry

#: Every client call of the suite is bounded by this unless a test says otherwise.
CALL_TIMEOUT_S = 10.0

StartNode = Callable[..., Awaitable[Node]]


class Refused(Exception):
    """The server refused a connection (or, for HTTP, the authenticating request)."""

    def __init__(self, answer: str, detail: str = "") -> None:
        super().__init__(f"{answer} {detail}".strip())
        self.answer = answer
        self.detail = detail


@dataclass(frozen=True)
class Outcome:
    """What an uplink got: acknowledged, or the protocol's "not stored" answer."""

    acked: bool
    answer: str
    #: The server ended the session instead of answering (the device must reconnect).
    closed: bool = False


@dataclass
class Device:
    tenant: str
    device_id: str
    #: The transport's credential: an API key, (PSK identity, key), certificate paths.
    credential: Any
    #: What revoking it takes: the key id, the fingerprint, the device id (PSK); None for a
    #: credential that was never provisioned.
    revoke_handle: str | None = None


class Session(ABC):
    """One authenticated connection of a device (HTTP: a keep-alive client session)."""

    @abstractmethod
    async def uplink(self, n: int, *, timeout: float = CALL_TIMEOUT_S) -> Outcome:
        """Send uplink number ``n``; acknowledged or not within ``timeout``."""

    @abstractmethod
    async def ended_by_server(self, *, timeout: float) -> str | None:
        """How the server ended this session (its answer), or None if it did not in time."""

    @abstractmethod
    async def close(self) -> None: ...


class Driver(ABC):
    """One transport (and credential kind) as the suite sees it."""

    #: The test id part and the figures' label.
    name: ClassVar[str]
    #: The ``transport`` label of ``corem_auth_failures_total``.
    metric_transport: ClassVar[str]
    #: The credential kind devices are provisioned with.
    kind: ClassVar[CredentialKind]
    #: Fixtures the driver needs besides ``start_node`` (certificates).
    fixtures: ClassVar[tuple[str, ...]] = ()
    #: The answer to an uplink while it cannot be stored (Cause.STORAGE_UNAVAILABLE).
    unstored_answer: ClassVar[str]
    #: Every answer a device may get under load while Redis is down, other than an ack.
    retry_answers: ClassVar[frozenset[str]]
    #: How a live session ends when its credential is revoked.
    revoked_answer: ClassVar[str]
    #: The answers to the malformed inputs ``bad_input`` sends, in order.
    bad_input_answers: ClassVar[tuple[str, ...]]

    tenant = "behaviour"

    def __init__(self, start_node: StartNode, fixtures: Mapping[str, Any]) -> None:
        self._start_node = start_node
        self.fx = dict(fixtures)
        self.node: Node | None = None
        self._n = 0
        self._sessions: list[Session] = []

    # -- the node ----------------------------------------------------------------------------
    @abstractmethod
    def sections(self) -> tuple[list[Any], dict[str, dict[str, Any]]]:
        """The listener factories and config sections of this transport's node."""

    async def start(self, **extra: dict[str, Any]) -> Node:
        factories, sections = self.sections()
        for name, values in extra.items():
            sections[name] = {**sections.get(name, {}), **values}
        self.node = await self._start_node(factories, **sections)
        return self.node

    @property
    def port(self) -> int:
        assert self.node is not None
        (listener,) = [x for x in self.node.listeners if x.name == self.listener_name]
        return int(listener.port)

    listener_name: ClassVar[str]

    @property
    def registry(self) -> Registry:
        assert self.node is not None and self.node.services is not None
        return self.node.services.registry

    def next_name(self) -> str:
        self._n += 1
        return f"{self.name}-{self._n}-{uuid.uuid4().hex[:6]}"

    # -- devices -----------------------------------------------------------------------------
    @abstractmethod
    async def provision(self) -> Device: ...

    @abstractmethod
    def unknown(self) -> Device:
        """A credential of the right form that was never provisioned."""

    async def revoke(self, device: Device) -> None:
        """Revoke the device's credential through the registry (its Lua script publishes
        the event every node's bus acts on)."""
        assert device.revoke_handle is not None
        registry = self.registry
        revoke: Any = {
            CredentialKind.API_KEY: registry.revoke_api_key,
            CredentialKind.X509: registry.revoke_cert,
            CredentialKind.PSK: registry.revoke_psk,
        }[self.kind]
        await revoke(self.tenant, device.revoke_handle, actor="test")

    async def connect(self, device: Device, *, timeout: float = CALL_TIMEOUT_S) -> Session:
        """Authenticate; raises ``Refused`` with the protocol's answer."""
        session = await self._connect(device, timeout)
        self._sessions.append(session)
        return session

    @abstractmethod
    async def _connect(self, device: Device, timeout: float) -> Session: ...

    @abstractmethod
    def refusal(self, cause: Cause) -> str:
        """The answer to a connection refused for ``cause`` (an authentication cause)."""

    @abstractmethod
    async def bad_input(self, device: Device) -> tuple[str, ...]:
        """Send malformed input as an authenticated ``device``; the server's answers."""

    # -- what the stream holds ---------------------------------------------------------------
    def mark(self, fields: Mapping[str, str]) -> int | None:
        """The uplink number of one stream entry this transport's devices sent."""
        payload = json.loads(fields["payload"])
        return payload.get("n") if isinstance(payload, dict) else None

    async def stored(self) -> list[tuple[str, int]]:
        """(device id, uplink number) of every entry in the tenant's stream, in order."""
        assert self.node is not None and self.node.redis is not None
        redis: Any = self.node.redis
        entries = await redis.xrange(self.node.keys.uplink_stream(self.tenant))
        out = []
        for _id, fields in entries:
            n = self.mark(fields)
            if n is not None:
                out.append((fields["device_id"], n))
        return out

    async def close(self) -> None:
        for session in reversed(self._sessions):
            await session.close()
