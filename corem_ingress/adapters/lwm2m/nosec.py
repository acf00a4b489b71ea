"""DEV ONLY: LwM2M without security (NoSec) on a plain-UDP ``coap://`` port.

Started only with ``lwm2m.allow_nosec`` (config validation requires ``lwm2m.nosec_tenant``).
There is no credential: a Register's endpoint name selects the device among the devices of
``nosec_tenant`` (by hardware_id or device_id, as ``lwm2m.endpoint_binding`` says); the
source address then stands for that device until it registers again. Registrations are
stored with ``security: "nosec"``; Observe, notifications, Send and operator requests work
as over DTLS. Never enable this where the UDP port is reachable by anyone else.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any, cast

import structlog
from aiocoap import Message
from aiocoap.numbers.codes import Code

from corem_ingress.adapters.coap.endpoint import CoapEndpoint
from corem_ingress.adapters.coap.site import DeviceSession
from corem_ingress.adapters.dtls.events import Address, Credential
from corem_ingress.adapters.lwm2m.coap import code_of, reply_message, request_fields
from corem_ingress.core.errors import IngressError, NotFound, PermissionDenied, Unauthenticated
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.lwm2m.registration import RD, Peer
from corem_ingress.lwm2m.reporting import DP

if TYPE_CHECKING:
    from corem_ingress.adapters.lwm2m.server import Lwm2mServer

log = structlog.get_logger("corem.lwm2m")

NOSEC_CREDENTIAL = "nosec"


class NoSecListener(asyncio.DatagramProtocol):
    def __init__(self, server: Lwm2mServer) -> None:
        self.server = server
        cfg = server.services.config
        self.tenant_id = cfg.lwm2m.nosec_tenant
        self.port = cfg.lwm2m.nosec_port
        self._ids = itertools.count(1)
        self.transport: asyncio.DatagramTransport | None = None
        self.endpoint = CoapEndpoint(
            self._sendto,
            self._request,
            ack_timeout=cfg.coap.ack_timeout_s,
            max_retransmit=cfg.coap.max_retransmit,
        )
        #: source address -> the device's pseudo-session (set by its Register).
        self.sessions: dict[Address, DeviceSession] = {}
        self._peers: dict[Address, Peer] = {}

    async def start(self) -> None:
        cfg = self.server.services.config.lwm2m
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self,
            local_addr=(cfg.nosec_host, cfg.nosec_port),
            reuse_port=self.server.services.config.reuse_port or None,
        )
        self.transport = transport
        self.port = int(self.transport.get_extra_info("sockname")[1])
        log.warning(
            "lwm2m.nosec_listening",
            host=cfg.nosec_host,
            port=self.port,
            tenant=self.tenant_id,
            note="DEV ONLY: LwM2M without DTLS",
        )

    def close(self) -> None:
        for addr in list(self.sessions):
            self._forget(addr)
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.endpoint.datagram_received((addr[0], addr[1]), data)

    def _sendto(self, addr: Address, data: bytes) -> bool:
        if self.transport is None:
            return False
        self.transport.sendto(data, addr)
        return True

    def _forget(self, addr: Address) -> None:
        session = self.sessions.pop(addr, None)
        self._peers.pop(addr, None)
        if session is not None:
            self.server.session_changed(session, False)
        self.endpoint.forget(addr)

    def _request(self, addr: Address, msg: Message) -> Any:
        path = tuple(msg.opt.uri_path)
        if not path or path[0] not in (RD, DP):
            return Message(code=Code.NOT_FOUND)
        return self._handle(addr, msg)

    async def _handle(self, addr: Address, msg: Message) -> Message:
        method, path, query, cf, payload = request_fields(msg)
        try:
            if method == "POST" and path == (RD,):
                peer = await self._register_peer(addr, query)
            else:
                known = self._peers.get(addr)
                if known is None:
                    raise Unauthenticated("register first", reason="nosec: unknown address")
                peer = known
        except IngressError as exc:
            log.info(
                "lwm2m.nosec_refused",
                peer=addr[0],
                port=addr[1],
                path="/".join(path)[:32],
                code=exc.coap_code,
                reason=exc.reason,
            )
            return Message(code=code_of(exc.coap_code))
        reply = await self.server.service.handle(peer, method, path, query, cf, payload)
        return cast(Message, reply_message(reply))

    async def _register_peer(self, addr: Address, query: tuple[str, ...]) -> Peer:
        endpoint = next((q[3:] for q in query if q.startswith("ep=")), None)
        if not endpoint:
            raise PermissionDenied("NoSec registration needs an endpoint name", reason="nosec")
        registry = self.server.services.registry
        try:
            if self.server.registrar_binding_is_device_id:
                device = await registry.get_device(self.tenant_id, endpoint)
            else:
                device = await registry.find_device(self.tenant_id, endpoint)
        except (NotFound, IngressError) as exc:
            if not isinstance(exc, NotFound) and exc.code != "INVALID_ARGUMENT":
                raise
            raise PermissionDenied("unknown NoSec endpoint", reason="nosec: unknown") from None
        identity = DeviceIdentity(
            self.tenant_id, device.device_id, CredentialKind.PSK, NOSEC_CREDENTIAL
        )
        if addr in self.sessions:
            self._forget(addr)
        session_id = f"nosec-{self.server.services.node_id}-{next(self._ids)}"
        credential = Credential(CredentialKind.PSK, f"{NOSEC_CREDENTIAL}:{endpoint}", identity)
        session = DeviceSession(addr, session_id, credential)
        self.sessions[addr] = session
        self.server.session_changed(session, True, nosec=True)
        peer = Peer(identity, device.hardware_id, self.server.services.node_id, session_id, False)
        self._peers[addr] = peer
        return peer


__all__ = ["NOSEC_CREDENTIAL", "NoSecListener"]
