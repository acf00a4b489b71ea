"""The LwM2M server on a node's CoAP/DTLS listener: the I/O glue around the sans-I/O layer.

* ``/rd`` and ``/dp`` are mounted on the listener (same UDP port as ``/up``); each request
  is answered by ``Lwm2mDeviceService`` with the ``Peer`` of its DTLS session (identity
  from the credential, hardware_id from the device record, this node's id).
* After a registration the tenant's configured paths are observed over the device's
  session; every notification (and every Send) becomes an uplink (transport ``lwm2m``).
* ``handle_routed`` serves operator requests routed here through Redis
  (``Lwm2mRequestServer``): Read / Write / Execute / Observe / Cancel-Observe / Discover
  sent as server-initiated CoAP requests over the session.

Observations live with the session: when the session ends they are forgotten, and an
Update on a new session observes again what is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiocoap import Message
from aiocoap.numbers.codes import Code

from corem_ingress.adapters.coap.endpoint import CoapEndpoint
from corem_ingress.adapters.coap.site import DeviceSession
from corem_ingress.adapters.lwm2m.coap import device_response, mounted_handler, request_message
from corem_ingress.adapters.lwm2m.nosec import NoSecListener
from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import IngressError, NotFound, Unauthenticated
from corem_ingress.core.uplink import Uplink
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.observations import ObservationTable
from corem_ingress.lwm2m.operations import DeviceRequest, DeviceResponse, Operation
from corem_ingress.lwm2m.registration import (
    RD,
    Deregistered,
    EndpointBinding,
    Event,
    Peer,
    Registered,
    Registrar,
    Registration,
    RegistrationConfig,
    Updated,
)
from corem_ingress.lwm2m.reporting import DP, paths_to_observe
from corem_ingress.lwm2m.service import Lwm2mDeviceService
from corem_ingress.store.lwm2m import RoutedRequest

if TYPE_CHECKING:
    from corem_ingress.adapters.coap.listener import CoapListener
    from corem_ingress.services import Services

log = structlog.get_logger("corem.lwm2m")


def registration_config(services: Services) -> RegistrationConfig:
    cfg = services.config.lwm2m
    return RegistrationConfig(
        endpoint_binding=EndpointBinding(cfg.endpoint_binding),
        allow_nosec=cfg.allow_nosec,
        min_lifetime_s=cfg.min_lifetime_s,
        max_lifetime_s=cfg.max_lifetime_s,
        expiry_grace_s=cfg.expiry_grace_s,
    )


class Lwm2mServer:
    """One per CoAP listener (``listener.lwm2m``); the node runs ``request_server``."""

    def __init__(
        self,
        services: Services,
        listener: CoapListener,
        *,
        append: Callable[[Uplink], Awaitable[str]] | None = None,
    ) -> None:
        self.services = services
        self.listener = listener
        self.config = services.config.lwm2m
        self._clock = services.clock
        reg_cfg = registration_config(services)
        self.store = services.stores.lwm2m_store(grace_s=reg_cfg.expiry_grace_s, clock=self._clock)
        self.service = Lwm2mDeviceService(
            Registrar(reg_cfg),
            self.store,
            # Behind the per-device message rate (coap/guard.py) when the listener has one.
            append or services.uplinks.append,
            clock=self._clock,
            on_event=self._on_event,
        )
        self.observations = ObservationTable()
        self.request_server = services.stores.lwm2m_request_server(
            services.node_id, self.handle_routed, clock=self._clock
        )
        #: device_id -> its DTLS session on this node.
        self._sessions: dict[str, DeviceSession] = {}
        #: session_id -> Peer (the device record is read once per session).
        self._peers: dict[str, Peer] = {}
        #: registration_id -> registration, for registrations made on this node.
        self._regs: dict[str, Registration] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handler = mounted_handler(self.service, self.peer_of)
        listener.mount(RD, self._blockwise)
        listener.mount(DP, self._blockwise)
        listener.session_hooks.append(self._session_hook)
        self.stats = {"notifications": 0, "observe_failed": 0}
        #: DEV ONLY: the plain-UDP NoSec listener (``lwm2m.allow_nosec``).
        self.nosec: NoSecListener | None = None
        if self.config.allow_nosec:
            self.nosec = NoSecListener(self)
        self._nosec_sessions: set[str] = set()

    @property
    def registrar_binding_is_device_id(self) -> bool:
        return self.service.registrar.config.endpoint_binding is EndpointBinding.DEVICE_ID

    async def start(self) -> None:
        if self.nosec is not None:
            await self.nosec.start()

    # -- sessions ----------------------------------------------------------------------------
    def _session_hook(self, session: DeviceSession, started: bool) -> None:
        self.session_changed(session, started)

    def session_changed(
        self, session: DeviceSession, started: bool, *, nosec: bool = False
    ) -> None:
        """A device session (DTLS, or a NoSec address) started or ended."""
        if session.credential is None:
            return
        device_id = session.credential.identity.device_id
        if started:
            self._sessions[device_id] = session
            if nosec:
                self._nosec_sessions.add(session.session_id)
            return
        self._peers.pop(session.session_id, None)
        self._nosec_sessions.discard(session.session_id)
        if self._sessions.get(device_id) is session:
            del self._sessions[device_id]
            # The endpoint forgot the session's observers; forget our side too.
            self.observations.remove_device(device_id)
            for reg_id in [r for r, reg in self._regs.items() if reg.device_id == device_id]:
                del self._regs[reg_id]

    async def peer_of(self, session: DeviceSession) -> Peer:
        peer = self._peers.get(session.session_id)
        if peer is not None:
            return peer
        if session.credential is None:  # the listener only routes credentialed sessions here
            raise Unauthenticated("LwM2M needs a DTLS credential", cause=Cause.NO_CREDENTIAL)
        ident = session.credential.identity
        device = await self.services.registry.get_device(ident.tenant_id, ident.device_id)
        peer = Peer(ident, device.hardware_id, self.services.node_id, session.session_id)
        if self._sessions.get(ident.device_id) is session:
            self._peers[session.session_id] = peer
        return peer

    def _blockwise(self, session: DeviceSession, msg: Any) -> Any:
        """Block1 (RFC 7959) reassembly of Register/Update/Send bodies, then the handler."""
        block = msg.opt.block1
        if block is None:
            return self._handler(session, msg)
        key = ("lwm2m", *msg.opt.uri_path, *msg.opt.uri_query)
        size = 1 << (block.size_exponent + 4)
        limit = self.services.config.coap.max_body_bytes
        if block.size_exponent > 6:
            return Message(code=Code.BAD_REQUEST)
        if block.block_number == 0:
            session.block1[key] = bytearray()
        so_far = session.block1.get(key)
        if so_far is None or len(so_far) != block.block_number * size:
            session.block1.pop(key, None)
            return Message(code=Code.REQUEST_ENTITY_INCOMPLETE)
        if (block.more and len(msg.payload) != size) or len(so_far) + len(msg.payload) > limit:
            session.block1.pop(key, None)
            return Message(code=Code.REQUEST_ENTITY_TOO_LARGE)
        so_far += msg.payload
        if block.more:
            resp = Message(code=Code.CONTINUE)
            resp.opt.block1 = (block.block_number, True, block.size_exponent)
            return resp
        msg.payload = bytes(session.block1.pop(key))
        msg.opt.block1 = None
        return self._finish_block(self._handler(session, msg), block)

    @staticmethod
    async def _finish_block(pending: Any, block: Any) -> Any:
        resp = await pending
        resp.opt.block1 = (block.block_number, False, block.size_exponent)
        return resp

    def _endpoint_of(self, session: DeviceSession) -> CoapEndpoint:
        if session.session_id in self._nosec_sessions and self.nosec is not None:
            return self.nosec.endpoint
        return self.listener.endpoint

    # -- registration events -------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drop(self, registration_id: str) -> None:
        for obs in self.observations.remove_registration(registration_id):
            session = self._sessions.get(obs.device_id)
            if session is not None:
                self._endpoint_of(session).stop_observing(session.addr, obs.token)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Registered):
            if event.replaced is not None:
                self._drop(event.replaced.registration_id)
                self._regs.pop(event.replaced.registration_id, None)
            self._regs[event.registration.registration_id] = event.registration
            self._spawn(self._observe_configured(event.registration))
        elif isinstance(event, Updated):
            self._regs[event.registration.registration_id] = event.registration
            self._spawn(self._observe_configured(event.registration))
        elif isinstance(event, Deregistered):
            self._drop(event.registration.registration_id)
            self._regs.pop(event.registration.registration_id, None)

    async def _observe_configured(self, reg: Registration) -> None:
        """Observe the tenant's configured paths the client announced and not yet observed."""
        paths = paths_to_observe(self.config.paths_for(reg.tenant_id), reg.objects)
        for path in paths:
            if self.observations.for_path(reg.device_id, path) is not None:
                continue
            request = ops.observe(path, root=reg.objects.root)
            try:
                response = await self._observe(
                    reg, request, timeout_s=self.config.request_timeout_s
                )
            except IngressError as exc:
                self.stats["observe_failed"] += 1
                log.info(
                    "lwm2m.observe_failed", device=reg.device_id, path=str(path), error=exc.code
                )
                continue
            if response.code == "2.05":
                await self._notified_uplink(reg, request, response)

    # -- observations ---------------------------------------------------------------------------
    async def _observe(
        self, reg: Registration, request: DeviceRequest, *, timeout_s: float
    ) -> DeviceResponse:
        session = self._session(reg.device_id)
        old = self.observations.for_path(reg.device_id, request.path)
        if old is not None:  # observing again replaces the previous observation
            self.observations.remove(old.token)
            self._endpoint_of(session).stop_observing(session.addr, old.token)
        token = self._endpoint_of(session).new_token()
        self.observations.add(token, reg.registration_id, reg.device_id, request, now=self._clock())

        def notified(msg: Any) -> None:
            self._spawn(self._notification(token, msg))

        try:
            answer = await self._send(session, request, timeout_s, token=token, observer=notified)
        except BaseException:
            self.observations.remove(token)
            raise
        response = device_response(answer)
        seq = answer.opt.observe
        if response.code != "2.05" or seq is None:
            self.observations.remove(token)
            self._endpoint_of(session).stop_observing(session.addr, token)
        else:
            self.observations.notification(token, seq, now=self._clock())
        return response

    async def _notification(self, token: bytes, msg: Any) -> None:
        seq = msg.opt.observe
        obs = self.observations.notification(token, seq, now=self._clock())
        if obs is None:
            return  # stale (reordered) notification, or an observation we dropped
        reg = self._regs.get(obs.registration_id)
        response = device_response(msg)
        ended = seq is None or not response.code.startswith("2.")
        if reg is None or reg.expired(self._clock()) or ended:
            self.observations.remove(token)
            session = self._sessions.get(obs.device_id)
            if session is not None:
                self._endpoint_of(session).stop_observing(session.addr, token)
            if reg is None or reg.expired(self._clock()) or not response.code.startswith("2."):
                return
        await self._notified_uplink(reg, obs.request, response)

    async def _notified_uplink(
        self, reg: Registration, request: DeviceRequest, response: DeviceResponse
    ) -> None:
        try:
            await self.service.notification(reg, request, response)
            self.stats["notifications"] += 1
        except IngressError as exc:
            log.info("lwm2m.notification_dropped", device=reg.device_id, error=exc.code)

    # -- server-initiated requests --------------------------------------------------------------
    def _session(self, device_id: str) -> DeviceSession:
        session = self._sessions.get(device_id)
        live = (
            self.nosec.sessions
            if session is not None
            and session.session_id in self._nosec_sessions
            and self.nosec is not None
            else self.listener.sessions
        )
        if session is None or live.get(session.addr) is not session:
            raise NotFound("the device has no DTLS session on its node", reason="no session")
        return session

    async def _send(
        self,
        session: DeviceSession,
        request: DeviceRequest,
        timeout_s: float,
        *,
        token: bytes | None = None,
        observer: Any = None,
    ) -> Any:
        try:
            async with asyncio.timeout(max(0.01, timeout_s)):
                return await self._endpoint_of(session).request(
                    session.addr,
                    request_message(request),
                    response_timeout=timeout_s,
                    token=token,
                    on_notification=observer,
                )
        except TimeoutError:
            raise ops.timeout_error() from None
        except ConnectionError:
            raise NotFound("the device's DTLS session ended", reason="session closed") from None

    async def call(
        self, reg: Registration, request: DeviceRequest, *, timeout_s: float
    ) -> DeviceResponse:
        """Send an operator's request to a device whose session is on this node."""
        if request.operation is Operation.OBSERVE:
            self._regs.setdefault(reg.registration_id, reg)
            return await self._observe(reg, request, timeout_s=timeout_s)
        session = self._session(reg.device_id)
        token = None
        if request.operation is Operation.CANCEL_OBSERVE:
            obs = self.observations.for_path(reg.device_id, request.path)
            if obs is None:
                raise NotFound(f"{request.path} is not observed", reason="not observed")
            self.observations.remove(obs.token)
            self._endpoint_of(session).stop_observing(session.addr, obs.token)
            token = obs.token
        return device_response(await self._send(session, request, timeout_s, token=token))

    async def handle_routed(self, routed: RoutedRequest) -> DeviceResponse:
        """``Lwm2mRequestServer``'s handler: a request routed here through Redis."""
        reg = await self.store.get(routed.registration_id)
        if reg is None or reg.device_id != routed.device_id:
            raise NotFound("no such LwM2M registration", reason="routed to a stale registration")
        left = routed.deadline - self._clock()
        return await self.call(reg, routed.request, timeout_s=left)

    async def stop(self) -> None:
        if self.nosec is not None:
            self.nosec.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


__all__ = ["Lwm2mServer", "registration_config"]
