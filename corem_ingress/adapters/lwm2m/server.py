"""The LwM2M server on a node's CoAP/DTLS listener: the I/O glue around the sans-I/O layer.

* ``/rd`` and ``/dp`` are mounted on the listener (same UDP port as ``/up``); each request
  is answered by ``Lwm2mDeviceService`` with the ``Peer`` of its DTLS session (identity
  from the credential, hardware_id from the device record, this node's id).
* A registration is bound to the DTLS session that sent its Register (or its latest
  Update): server-initiated requests go over that session only. Another session opened
  with the same credential (a reboot in progress, or anyone holding the key) changes
  nothing until it registers or updates itself.
* The bound session stays open as long as the registration lives (lifetime + grace),
  whatever the DTLS idle timeout; when it ends the registration shows ``reachable: false``.
  A De-register closes the session that sent it (some clients send no close_notify).
* After a Register / Update the tenant's configured paths are observed over the bound
  session; every notification (and every Send) becomes an uplink (transport ``lwm2m``).
  Observations belong to one registration and one session and die with either; operator
  and automatic observations of one path share one CoAP observation (``observations.py``).
* Queue mode: a request from a queue-mode device (Register, Update, Send) marks it awake
  (``store/lwm2m_queue.py``) and sends, in order, the requests queued while it slept; their
  results are stored and reported as events. Its session ending puts it to sleep again.
* After a Register, the tenant's default attributes (``lwm2m.default_attributes``) are
  written before those paths are observed.
* ``handle_routed`` serves operator requests routed here through Redis
  (``Lwm2mRequestServer``): every ``operations.Operation`` (Read / Write / Execute /
  Observe / Cancel-Observe / Discover / Write-Attributes / Create / Delete and the
  composite ones) sent as server-initiated CoAP requests over the bound session; an
  Observe-Composite is an observation of its own, keyed by its paths.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiocoap.numbers.codes import Code

from corem_ingress.adapters.coap.blockwise import Complete
from corem_ingress.adapters.coap.endpoint import CoapEndpoint
from corem_ingress.adapters.coap.site import DeviceSession, receive_block1
from corem_ingress.adapters.lwm2m.coap import device_response, mounted_handler, request_message
from corem_ingress.adapters.lwm2m.events import EventPublisher
from corem_ingress.adapters.lwm2m.firmware_agent import FirmwareAgent
from corem_ingress.adapters.lwm2m.nosec import NoSecListener
from corem_ingress.adapters.lwm2m.service import Lwm2mDeviceService
from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import IngressError, NotFound, Unauthenticated, Unavailable
from corem_ingress.core.uplink import Uplink
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.events import EventKind
from corem_ingress.lwm2m.firmware import PULL_SEGMENT
from corem_ingress.lwm2m.objects import load_model
from corem_ingress.lwm2m.observations import Observation, ObservationTable, Owner
from corem_ingress.lwm2m.operations import DeviceRequest, DeviceResponse, Operation
from corem_ingress.lwm2m.queue import QueuedRequest, Status
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
from corem_ingress.store.lwm2m import RoutedRequest
from corem_ingress.tasks import still_running

if TYPE_CHECKING:
    from corem_ingress.adapters.coap.listener import CoapListener
    from corem_ingress.services import Services

log = structlog.get_logger("corem.lwm2m")

#: How often registrations made here are checked for expiry (their observations end then).
EXPIRY_CHECK_S = 1.0
#: The error of a queued request whose deadline passed before its device woke up.
_EXPIRED = {
    "code": "DEADLINE_EXCEEDED",
    "message": "the device did not wake up before the deadline",
}
#: After a De-register's 2.02 went out, its session is closed this much later (a client
#: that sends its own close_notify does it first).
DEREGISTER_CLOSE_S = 0.5


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
        self._grace_s = reg_cfg.expiry_grace_s
        self.store = services.stores.lwm2m_store(grace_s=reg_cfg.expiry_grace_s, clock=self._clock)
        self.service = Lwm2mDeviceService(
            Registrar(reg_cfg),
            self.store,
            # Behind the per-device message rate (coap/guard.py) when the listener has one.
            append or services.uplinks.append,
            clock=self._clock,
            on_event=self._on_event,
            unavailable_max_age_s=services.config.coap.unavailable_max_age_s,
            model=load_model(self.config.models_dir),
        )
        self.observations = ObservationTable()
        #: The tenant's LwM2M event stream (``GET /api/v1/lwm2m/events``).
        self.events = EventPublisher(services.stores.lwm2m_events(), clock=self._clock)
        self.queue = services.stores.lwm2m_queue(clock=self._clock)
        self._queue_policy = self.config.queue_policy()
        #: Devices whose queued requests are being sent now (one drain per device).
        self._draining: set[str] = set()
        self.request_server = services.stores.lwm2m_request_server(
            services.node_id, self.handle_routed, clock=self._clock
        )
        #: session_id -> the live session (DTLS, or a NoSec address) on this node.
        self._live: dict[str, DeviceSession] = {}
        #: session_id -> Peer (the device record is read once per session).
        self._peers: dict[str, Peer] = {}
        #: registration_id -> registration, for registrations made or updated on this node.
        self._regs: dict[str, Registration] = {}
        #: (expires_at, registration_id): registrations to check for expiry, soonest first;
        #: ``_checks`` holds the soonest check queued per registration (one entry each).
        self._expiry: list[tuple[float, str]] = []
        self._checks: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Registration writes (reachable: false) that shutdown waits for, never cancels.
        self._writes: set[asyncio.Task[Any]] = set()
        self._expiry_task: asyncio.Task[None] | None = None
        self._handler = mounted_handler(self.service, self.peer_of)
        listener.mount(RD, self._blockwise)
        listener.mount(DP, self._blockwise)
        #: Firmware update (object 5): jobs handed here, image pulls on ``/fw/<token>``.
        self.firmware = FirmwareAgent(self)
        self.request_server.on_firmware = self.firmware.start_job
        listener.mount(PULL_SEGMENT, self.firmware.serve_pull)
        listener.session_hooks.append(self._session_hook)
        self.stats = {"notifications": 0, "observe_failed": 0, "attributes_failed": 0}
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
        self._expiry_task = asyncio.ensure_future(self._expire_loop())

    # -- sessions ----------------------------------------------------------------------------
    def _session_hook(self, session: DeviceSession, started: bool) -> None:
        self.session_changed(session, started)

    def session_changed(
        self, session: DeviceSession, started: bool, *, nosec: bool = False
    ) -> None:
        """A device session (DTLS, or a NoSec address) started or ended. A new session
        takes nothing over: registrations stay bound to the session that made them."""
        if session.credential is None:
            return
        sid = session.session_id
        if started:
            self._live[sid] = session
            if nosec:
                self._nosec_sessions.add(sid)
            return
        self._live.pop(sid, None)
        self._peers.pop(sid, None)
        self._nosec_sessions.discard(sid)
        # The endpoint forgot the session's observers; forget our side too.
        self._observations_ended(
            self.observations.remove_session(sid),
            session.credential.identity.tenant_id,
            "session ended",
        )
        for reg in [r for r in self._regs.values() if r.session_id == sid]:
            self._regs[reg.registration_id] = dataclasses.replace(reg, reachable=False)
            if reg.queue_mode:
                self._spawn(self.queue.sleep(reg.device_id))
            log.info(
                "lwm2m.unreachable",
                device=reg.device_id,
                registration=reg.registration_id,
                session=sid,
            )
            write = asyncio.ensure_future(self._mark_unreachable(reg))
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)

    async def _mark_unreachable(self, reg: Registration) -> None:
        try:
            await self.store.set_unreachable(reg.registration_id, reg.session_id)
        except IngressError as exc:
            log.warning("lwm2m.unreachable_not_stored", device=reg.device_id, error=exc.code)

    async def peer_of(self, session: DeviceSession) -> Peer:
        peer = self._peers.get(session.session_id)
        if peer is not None:
            return peer
        if session.credential is None:  # the listener only routes credentialed sessions here
            raise Unauthenticated("LwM2M needs a DTLS credential", cause=Cause.NO_CREDENTIAL)
        ident = session.credential.identity
        device = await self.services.registry.get_device(ident.tenant_id, ident.device_id)
        peer = Peer(ident, device.hardware_id, self.services.node_id, session.session_id)
        if session.session_id in self._live:
            self._peers[session.session_id] = peer
        return peer

    def _blockwise(self, session: DeviceSession, msg: Any) -> Any:
        """Block1 (RFC 7959) reassembly of Register/Update/Send bodies (the CoAP site's
        ``Block1Receiver``), then the handler."""
        block = msg.opt.block1
        if block is None:
            return self._handle(session, msg, None)
        key = ("lwm2m", *msg.opt.uri_path, "?", *msg.opt.uri_query)
        step = receive_block1(session, key, msg, max_body=self.services.config.coap.max_body_bytes)
        if not isinstance(step, Complete):
            return step
        msg.payload = step.body
        msg.opt.block1 = None
        return self._handle(session, msg, step)

    async def _handle(self, session: DeviceSession, msg: Any, block: Complete | None) -> Any:
        resp = await self._handler(session, msg)
        if tuple(msg.opt.uri_path[:1]) == (DP,) and resp.code.is_successful():
            for reg in [r for r in self._regs.values() if r.session_id == session.session_id]:
                if reg.queue_mode:
                    self._spawn(self._woke(reg))
        if block is not None:
            resp.opt.block1 = (block.num, False, block.szx)
        if msg.code == Code.DELETE and resp.code == Code.DELETED:
            # De-registered: the client is done with this session (not all say close_notify).
            asyncio.get_running_loop().call_later(
                DEREGISTER_CLOSE_S, self._close_after_deregister, session
            )
        return resp

    def _close_after_deregister(self, session: DeviceSession) -> None:
        sid = session.session_id
        if self._live.get(sid) is not session or session.observations:
            return  # gone already, or it also observes /down
        if any(r.session_id == sid for r in self._regs.values()):
            return  # it registered again meanwhile
        if sid not in self._nosec_sessions:
            log.info("lwm2m.deregistered_session_closed", session=sid)
            self.listener.close_session(session.addr, Cause.CLOSED_BY_SERVER)

    def _endpoint_of(self, session: DeviceSession) -> CoapEndpoint:
        if session.session_id in self._nosec_sessions and self.nosec is not None:
            return self.nosec.endpoint
        return self.listener.endpoint

    def _keep(self, reg: Registration, until: float) -> None:
        """Keep the registration's DTLS session open until ``until`` (0: idle rules)."""
        session = self._live.get(reg.session_id)
        if session is not None and session.session_id not in self._nosec_sessions:
            self.listener.keep_session(session.addr, until)

    # -- registration events -------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as one of the server's tasks (cancelled by ``stop``)."""
        self._spawn(coro)

    def _observations_ended(self, gone: list[Observation], tenant_id: str, reason: str) -> None:
        for obs in gone:
            self.events.publish(
                EventKind.OBSERVATION_CANCELLED,
                tenant_id,
                obs.device_id,
                {
                    "registration_id": obs.registration_id,
                    "path": str(obs.request.path),
                    "reason": reason,
                },
            )

    def _cancel_at_device(
        self, gone: list[Observation], tenant_id: str | None = None, reason: str = ""
    ) -> None:
        """Forget observations at the CoAP layer: their next notification gets a RST.
        With ``tenant_id``, each is reported as an ``observation_cancelled`` event."""
        if tenant_id is not None:
            self._observations_ended(gone, tenant_id, reason)
        for obs in gone:
            session = self._live.get(obs.session_id)
            if session is not None:
                self._endpoint_of(session).stop_observing(session.addr, obs.token)

    def _bind(self, reg: Registration) -> None:
        self._regs[reg.registration_id] = reg
        self._check_expiry_at(reg.registration_id, reg.expires_at)
        self._keep(reg, reg.expires_at + self._grace_s)

    def _check_expiry_at(self, registration_id: str, at: float) -> None:
        queued = self._checks.get(registration_id)
        if queued is None or at < queued:
            self._checks[registration_id] = at
            heapq.heappush(self._expiry, (at, registration_id))

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Registered):
            reg = event.registration
            # Every observation of the device's earlier registrations is void, also of one
            # that expired unseen (Redis dropped it: ``replaced`` is then None).
            self._cancel_at_device(
                self.observations.remove_device_except(reg.device_id, reg.registration_id),
                reg.tenant_id,
                "registration replaced",
            )
            for old in [r for r in self._regs.values() if r.device_id == reg.device_id]:
                del self._regs[old.registration_id]
                if old.session_id != reg.session_id:
                    self._keep(old, 0.0)
            self._bind(reg)
            log.info(
                "lwm2m.registered",
                device=reg.device_id,
                endpoint=reg.endpoint,
                registration=reg.registration_id,
                version=reg.version,
                lifetime_s=reg.lifetime_s,
                binding=reg.binding,
                session=reg.session_id,
                replaced=event.replaced.registration_id if event.replaced else None,
            )
            self.events.publish(
                EventKind.REGISTERED,
                reg.tenant_id,
                reg.device_id,
                {
                    "registration_id": reg.registration_id,
                    "endpoint": reg.endpoint,
                    "version": reg.version,
                    "binding": reg.binding,
                    "queue_mode": reg.queue_mode,
                    "lifetime_s": reg.lifetime_s,
                    "node_id": reg.node_id,
                    "replaced": event.replaced.registration_id if event.replaced else None,
                },
            )
            self._spawn(self._observe_configured(reg, attributes=True))
            if reg.queue_mode:
                self._spawn(self._woke(reg))
        elif isinstance(event, Updated):
            reg, previous = event.registration, event.previous
            known = self._regs.get(reg.registration_id)
            old_session = (known or previous).session_id
            if old_session != reg.session_id:
                # The device updated over a new session: what was observed over the old one
                # is observed again over this one.
                gone = [
                    o
                    for o in self.observations.remove_session(old_session)
                    if o.registration_id == reg.registration_id
                ]
                self._cancel_at_device(gone, reg.tenant_id, "session changed")
                if known is not None:
                    self._keep(known, 0.0)
            self._bind(reg)
            log.info(
                "lwm2m.updated",
                device=reg.device_id,
                registration=reg.registration_id,
                lifetime_s=reg.lifetime_s,
                session=reg.session_id,
                session_changed=old_session != reg.session_id,
            )
            self.events.publish(
                EventKind.UPDATED,
                reg.tenant_id,
                reg.device_id,
                {
                    "registration_id": reg.registration_id,
                    "lifetime_s": reg.lifetime_s,
                    "node_id": reg.node_id,
                    "session_changed": old_session != reg.session_id,
                },
            )
            self._spawn(self._observe_configured(reg))
            if reg.queue_mode:
                self._spawn(self._woke(reg))
        elif isinstance(event, Deregistered):
            reg = event.registration
            self._drop(reg)
            log.info(
                "lwm2m.deregistered",
                device=reg.device_id,
                endpoint=reg.endpoint,
                registration=reg.registration_id,
            )
            self.events.publish(
                EventKind.DEREGISTERED,
                reg.tenant_id,
                reg.device_id,
                {"registration_id": reg.registration_id, "endpoint": reg.endpoint},
            )

    def _drop(self, reg: Registration) -> None:
        self._cancel_at_device(
            self.observations.remove_registration(reg.registration_id),
            reg.tenant_id,
            "registration ended",
        )
        known = self._regs.pop(reg.registration_id, None)
        if known is not None:
            self._keep(known, 0.0)

    def _due(self, now: float) -> list[Registration]:
        """Registrations held here whose lifetime passed by this node's account."""
        due = []
        while self._expiry and self._expiry[0][0] <= now:
            at, reg_id = heapq.heappop(self._expiry)
            if self._checks.get(reg_id) != at:
                continue  # superseded by a sooner check
            del self._checks[reg_id]
            reg = self._regs.get(reg_id)
            if reg is None:
                continue
            if not reg.expired(now):  # updated since: check again at its new expiry
                self._check_expiry_at(reg_id, reg.expires_at)
                continue
            due.append(reg)
        return due

    async def expire(self, now: float) -> list[Registration]:
        """Registrations held here whose lifetime passed: their observations end, their
        session goes back to the idle timeout (after lifetime + grace). One that another
        node updated or replaced meanwhile (the device moved) is dropped here quietly."""
        expired = []
        for reg in self._due(now):
            try:
                current = await self.store.get_by_device(reg.device_id, include_expired=True)
            except IngressError:
                current = None  # Redis cannot tell: this node's account stands
            if current is not None and current.registration_id == reg.registration_id:
                if not current.expired(now):  # updated on another node (or session)
                    if (current.node_id, current.session_id) == (reg.node_id, reg.session_id):
                        self._regs[reg.registration_id] = current
                        self._check_expiry_at(reg.registration_id, current.expires_at)
                        continue
                    self._drop(reg)
                    continue
            elif current is not None:  # replaced by a newer registration elsewhere
                self._drop(reg)
                continue
            self._cancel_at_device(
                self.observations.remove_registration(reg.registration_id),
                reg.tenant_id,
                "registration expired",
            )
            self._regs.pop(reg.registration_id, None)
            # The session stays until lifetime + grace (``_bind``), then idles out.
            expired.append(reg)
            log.info(
                "lwm2m.expired",
                device=reg.device_id,
                endpoint=reg.endpoint,
                registration=reg.registration_id,
                lifetime_s=reg.lifetime_s,
            )
            self.events.publish(
                EventKind.EXPIRED,
                reg.tenant_id,
                reg.device_id,
                {"registration_id": reg.registration_id, "endpoint": reg.endpoint},
            )
        return expired

    async def _expire_loop(self) -> None:
        while still_running():
            await asyncio.sleep(EXPIRY_CHECK_S)
            try:
                await self.expire(self._clock())
                await self.sweep_queue(self._clock())
            except Exception:  # never let the loop die
                log.exception("lwm2m.expiry_check_failed")

    # -- queue mode ---------------------------------------------------------------------------
    async def _woke(self, reg: Registration) -> None:
        """A queue-mode device sent a request: awake for the window; what waited goes out."""
        try:
            woke = await self.queue.wake(reg.device_id, self._queue_policy.awake_s)
            if woke:
                waiting = await self.queue.waiting(reg.device_id)
                log.info("lwm2m.awake", device=reg.device_id, queued=waiting)
                self.events.publish(
                    EventKind.AWAKE,
                    reg.tenant_id,
                    reg.device_id,
                    {"registration_id": reg.registration_id, "queued": waiting},
                )
            if reg.device_id in self._draining:
                return  # the running drain takes what came meanwhile
            self._draining.add(reg.device_id)
            try:
                while (item := await self.queue.pop(reg.device_id)) is not None:
                    await self._send_queued(reg, item)
            finally:
                self._draining.discard(reg.device_id)
        except IngressError as exc:  # Redis: the requests stay queued for the next wake
            log.warning("lwm2m.queue_drain_failed", device=reg.device_id, error=exc.code)

    async def _send_queued(self, reg: Registration, item: QueuedRequest) -> None:
        now = self._clock()
        if not item.due(now):
            await self._queued_finished(item.finished(Status.EXPIRED, now, error=_EXPIRED))
            return
        await self.queue.save(dataclasses.replace(item, status=Status.SENT))
        current = self._regs.get(reg.registration_id, reg)
        try:
            response = await self.call(
                current, item.request, timeout_s=self.config.request_timeout_s
            )
            result = {  # the same body as a 200 of the admin API
                "device_id": item.device_id,
                "registration_id": current.registration_id,
                **ops.interpret(
                    item.request, response, now=self._clock(), model=self.service.model
                ).to_json(self.service.model, root=current.objects.root),
            }
        except IngressError as exc:
            error = exc.to_json()["error"]
            await self._queued_finished(item.finished(Status.FAILED, self._clock(), error=error))
            return
        await self._queued_finished(item.finished(Status.DONE, self._clock(), result=result))

    async def _queued_finished(self, item: QueuedRequest) -> None:
        await self.queue.save(item)
        done = item.status is Status.DONE
        log.info(
            "lwm2m.queued_request_finished",
            device=item.device_id,
            request_id=item.request_id,
            status=item.status.value,
        )
        self.events.publish(
            EventKind.REQUEST_DONE if done else EventKind.REQUEST_FAILED,
            item.tenant_id,
            item.device_id,
            {
                "request_id": item.request_id,
                "operation": item.operation,
                "path": str(item.request.path),
                "status": item.status.value,
                **({"result": item.result} if done else {"error": item.error}),
            },
        )

    async def sweep_queue(self, now: float) -> int:
        """Queued requests whose deadline passed while their device slept: recorded as
        expired and reported (each by the one node that claimed it)."""
        swept = await self.queue.past_deadline(now)
        for item in swept:
            if item.status is Status.QUEUED:
                await self._queued_finished(item.finished(Status.EXPIRED, now, error=_EXPIRED))
        return len(swept)

    async def _observe_configured(self, reg: Registration, *, attributes: bool = False) -> None:
        """Observe the tenant's configured paths the client announced and not yet observed;
        after a Register (``attributes``), first write the tenant's default attributes (the
        observations then report by them)."""
        if attributes:
            await self._write_default_attributes(reg)
        paths = paths_to_observe(self.config.paths_for(reg.tenant_id), reg.objects)
        for path in paths:
            if self._regs.get(reg.registration_id) is not reg:
                return  # updated, replaced or gone meanwhile: that event observes
            request = ops.observe(path, accept=ops.preferred_format(reg), root=reg.objects.root)
            try:
                response = await self._observe(
                    reg, request, Owner.AUTO, timeout_s=self.config.request_timeout_s
                )
            except IngressError as exc:
                self.stats["observe_failed"] += 1
                log.info(
                    "lwm2m.observe_failed", device=reg.device_id, path=str(path), error=exc.code
                )
                continue
            if response is not None and response.code == "2.05":
                await self._notified_uplink(reg, request, response)

    async def _write_default_attributes(self, reg: Registration) -> None:
        """Write-Attributes of the tenant's ``default_attributes`` on objects the client
        announced. A refusal is logged and counted; the rest still goes."""
        for text in self.config.attributes_for(reg.tenant_id):
            spec = ops.AttributeSpec.parse(text)  # validated at config load
            if not reg.objects.has(spec.path):
                continue
            if self._regs.get(reg.registration_id) is not reg:
                return  # updated, replaced or gone meanwhile
            request = spec.request(root=reg.objects.root, model=self.service.model)
            try:
                session = self._session(reg)
                response = device_response(
                    await self._send(session, request, self.config.request_timeout_s)
                )
            except IngressError as exc:
                response = DeviceResponse(exc.coap_code)
            if response.code != "2.04":
                self.stats["attributes_failed"] += 1
                log.info(
                    "lwm2m.attributes_failed",
                    device=reg.device_id,
                    path=str(spec.path),
                    code=response.code,
                )

    # -- observations ---------------------------------------------------------------------------
    async def _observe(
        self, reg: Registration, request: DeviceRequest, owner: Owner, *, timeout_s: float
    ) -> DeviceResponse | None:
        """Observe ``request.path`` for ``owner``. One CoAP observation per path: if the path
        is observed already, ``owner`` joins it; an operator then gets the current value
        (a Read), the automatic feed nothing (None)."""
        session = self._session(reg)
        existing = self.observations.for_key(reg.registration_id, request.observe_key)
        if existing is not None and existing.session_id == session.session_id:
            existing.owners.add(owner)
            if owner is Owner.AUTO:
                return None
            return device_response(await self._send(session, ops.as_read(request), timeout_s))
        if existing is not None:  # observed over a session the registration left
            self._cancel_at_device([existing])
            self.observations.remove(existing.token)
        endpoint = self._endpoint_of(session)
        token = endpoint.new_token()
        self.observations.add(
            token,
            reg.registration_id,
            reg.device_id,
            session.session_id,
            request,
            owner,
            now=self._clock(),
        )

        def notified(msg: Any) -> None:
            self._spawn(self._notification(token, msg))

        try:
            answer = await self._send(session, request, timeout_s, token=token, observer=notified)
        except BaseException:
            self.observations.remove(token)
            endpoint.stop_observing(session.addr, token)
            raise
        response = device_response(answer)
        seq = answer.opt.observe
        if response.code != "2.05" or seq is None:
            self.observations.remove(token)
            endpoint.stop_observing(session.addr, token)
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
            session = self._live.get(obs.session_id)
            tenant = reg.tenant_id if reg is not None else None
            if tenant is None and session is not None and session.credential is not None:
                tenant = session.credential.identity.tenant_id
            self._cancel_at_device([obs], tenant, "ended by the device" if ended else "stale")
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
        if request.path.object_id == 5:  # a firmware update's progress
            try:
                await self.firmware.notified(reg, request, response)
            except IngressError as exc:
                log.info("lwm2m.firmware_report_dropped", device=reg.device_id, error=exc.code)

    async def observe_auto(
        self, reg: Registration, request: DeviceRequest
    ) -> DeviceResponse | None:
        """Observe for the server itself (firmware progress); None if already observed."""
        self._regs.setdefault(reg.registration_id, reg)
        return await self._observe(
            reg, request, Owner.AUTO, timeout_s=self.config.request_timeout_s
        )

    async def send_message(self, reg: Registration, msg: Any, *, timeout_s: float) -> Any:
        """A ready-made CoAP request (a Block1 block) over the registration's session."""
        return await self._exchange(self._session(reg), msg, timeout_s)

    # -- server-initiated requests --------------------------------------------------------------
    def _session(self, reg: Registration) -> DeviceSession:
        """The live session the registration is bound to (never another of the device's)."""
        session = self._live.get(reg.session_id)
        if session is not None:
            live = (
                self.nosec.sessions
                if session.session_id in self._nosec_sessions and self.nosec is not None
                else self.listener.sessions
            )
            if live.get(session.addr) is session:
                return session
        raise Unavailable(
            "the device is not reachable: the DTLS session of its registration ended "
            "(it is again after its next Update or Register)",
            reason="no session",
        )

    async def _send(
        self,
        session: DeviceSession,
        request: DeviceRequest,
        timeout_s: float,
        *,
        token: bytes | None = None,
        observer: Any = None,
    ) -> Any:
        message = request_message(request)
        return await self._exchange(session, message, timeout_s, token=token, observer=observer)

    async def _exchange(
        self,
        session: DeviceSession,
        message: Any,
        timeout_s: float,
        *,
        token: bytes | None = None,
        observer: Any = None,
    ) -> Any:
        try:
            async with asyncio.timeout(max(0.01, timeout_s)):
                return await self._endpoint_of(session).request(
                    session.addr,
                    message,
                    response_timeout=timeout_s,
                    token=token,
                    on_notification=observer,
                )
        except TimeoutError:
            raise ops.timeout_error() from None
        except ConnectionError:
            raise Unavailable(
                "the device's DTLS session ended during the request", reason="session closed"
            ) from None

    async def call(
        self, reg: Registration, request: DeviceRequest, *, timeout_s: float
    ) -> DeviceResponse:
        """Send an operator's request to a device whose session is on this node."""
        if request.operation in (Operation.OBSERVE, Operation.OBSERVE_COMPOSITE):
            self._regs.setdefault(reg.registration_id, reg)
            response = await self._observe(reg, request, Owner.OPERATOR, timeout_s=timeout_s)
            assert response is not None
            return response
        session = self._session(reg)
        if request.operation in (Operation.CANCEL_OBSERVE, Operation.CANCEL_OBSERVE_COMPOSITE):
            return await self._cancel(reg, session, request, timeout_s)
        return device_response(await self._send(session, request, timeout_s))

    async def _cancel(
        self, reg: Registration, session: DeviceSession, request: DeviceRequest, timeout_s: float
    ) -> DeviceResponse:
        """An operator's Cancel-Observe: the automatic feed of the same path stays (the
        answer is then a Read of the path); cancelled at the device when nobody is left."""
        obs = self.observations.for_key(reg.registration_id, request.observe_key)
        if obs is None or Owner.OPERATOR not in obs.owners:
            what = ", ".join(str(p) for p in request.paths) if request.paths else request.path
            raise NotFound(f"{what} is not observed by an operator", reason="not observed")
        if self.observations.release(obs.token, Owner.OPERATOR) is None:
            return device_response(await self._send(session, ops.as_read(request), timeout_s))
        self._endpoint_of(session).stop_observing(session.addr, obs.token)
        return device_response(await self._send(session, request, timeout_s, token=obs.token))

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
        if self._expiry_task is not None:
            self._expiry_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        pending = [t for t in (*self._tasks, self._expiry_task) if t is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await self.events.flush()
        if self._writes:  # the sessions just closed: their registrations say unreachable
            await asyncio.wait(list(self._writes), timeout=2.0)


__all__ = ["Lwm2mServer", "registration_config"]
