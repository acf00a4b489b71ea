"""Firmware update, the node holding the device's session (``Lwm2mServer.firmware``).

* ``start_job`` (a job handed here through the node's request stream): observe /5/0/3 and
  /5/0/5, then either give the device its Package URI (pull) or write the image to /5/0/0
  block by block with Block1 (push).
* ``notified``: every value of /5/0/3 or /5/0/5 the device reports moves its job
  (``lwm2m/firmware.on_device_report``); once downloaded the server Executes /5/0/2. Each
  change is a ``firmware`` event.
* ``serve_pull``: ``GET /fw/<token>`` on the DTLS port, Block2, answered only to a session
  of the job's own device (another device's session: 4.03; an unknown or finished job's
  token: 4.04).
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import structlog
from aiocoap import Message
from aiocoap.numbers.codes import Code

from corem_ingress.adapters.coap.site import DeviceSession
from corem_ingress.adapters.lwm2m.coap import dotted
from corem_ingress.adapters.lwm2m.operator import build_request
from corem_ingress.core.errors import IngressError, InvalidArgument, NotFound
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.content import CF_OPAQUE
from corem_ingress.lwm2m.events import EventKind
from corem_ingress.lwm2m.firmware import (
    PACKAGE,
    PACKAGE_URI,
    STATE,
    UPDATE,
    UPDATE_RESULT,
    Action,
    FirmwareJob,
    JobStatus,
    Method,
    block_of,
    on_device_report,
    pull_uri,
    serving_szx,
    szx_of,
)
from corem_ingress.lwm2m.model import Lwm2mPath
from corem_ingress.lwm2m.operations import DeviceRequest, DeviceResponse
from corem_ingress.lwm2m.registration import Registration

if TYPE_CHECKING:
    from corem_ingress.adapters.lwm2m.server import Lwm2mServer

log = structlog.get_logger("corem.lwm2m")

#: Images kept in memory on this node (total bytes), least recently used dropped first.
IMAGE_CACHE_BYTES = 64 * 1024 * 1024
#: How long a pull token's job is trusted from this node's memory before it is read again.
TOKEN_CACHE_S = 5.0


class FirmwareAgent:
    def __init__(self, server: Lwm2mServer) -> None:
        self._server = server
        services = server.services
        self.store = services.stores.firmware(clock=services.clock)
        cfg = services.config
        self._szx = szx_of(cfg.lwm2m.firmware_block_size)
        self._uri_host = cfg.lwm2m.firmware_uri_host or cfg.coap.host
        self._images: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        #: token -> (job, read at): pulls read the job once per few seconds, not per block.
        self._tokens: dict[str, tuple[FirmwareJob, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.stats = {"blocks_served": 0, "blocks_pushed": 0, "pushes_completed": 0}

    # -- starting a job -------------------------------------------------------------------
    async def start_job(self, job_id: str) -> None:
        try:
            job = await self.store.job(job_id)
            if job is None or job.status.final:
                return
            reg = await self._server.store.get_by_device(job.device_id)
            if reg is None or reg.tenant_id != job.tenant_id:
                await self._save(job.failed("the device has no LwM2M registration", _now(self)))
                return
            await self._observe_progress(reg)
            if job.method is Method.PULL:
                uri = pull_uri(self._uri_host, self._server.listener.port, job.token)
                write = build_request(
                    "write",
                    reg,
                    {
                        "path": str(PACKAGE_URI),
                        "values": [{"path": str(PACKAGE_URI), "value": uri}],
                    },
                )
                await self._call(reg, write)
                log.info("lwm2m.firmware_uri_written", device=job.device_id, job=job.job_id)
            else:
                # A push can take minutes: a server task (cancelled at shutdown), not part of
                # the request stream's work, which shutdown waits for.
                self._server.spawn(self._push_job(reg, job))
        except IngressError as exc:
            await self._failed(job_id, exc)

    async def _failed(self, job_id: str, exc: IngressError) -> None:
        log.info("lwm2m.firmware_failed", job=job_id, error=exc.code, message=exc.message)
        current = await self._job_or_none(job_id)
        if current is not None and not current.status.final:
            await self._save(current.failed(exc.message, _now(self)))

    async def _push_job(self, reg: Registration, job: FirmwareJob) -> None:
        try:
            async with self._lock(job.device_id):
                current = await self.store.job(job.job_id)
                if current is None or current.status not in (
                    JobStatus.PENDING,
                    JobStatus.DOWNLOADING,  # the device's State 1 may have said so first
                ):
                    return  # finished or moved on meanwhile
                if current.status is JobStatus.PENDING:
                    await self._save(
                        replace(current, status=JobStatus.DOWNLOADING, updated_at=_now(self))
                    )
            await self._push(reg, job)
        except IngressError as exc:
            await self._failed(job.job_id, exc)

    def _lock(self, device_id: str) -> asyncio.Lock:
        lock = self._locks.get(device_id)
        if lock is None:
            if len(self._locks) > 10_000:  # drop the idle ones (devices done updating)
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks[device_id] = asyncio.Lock()
        return lock

    async def _job_or_none(self, job_id: str) -> FirmwareJob | None:
        try:
            return await self.store.job(job_id)
        except IngressError:
            return None

    async def _observe_progress(self, reg: Registration) -> None:
        """Observe State and Update Result; their current values count as reports too."""
        for path in (STATE, UPDATE_RESULT):
            request = ops.observe(path, accept=ops.preferred_format(reg), root=reg.objects.root)
            response = await self._server.observe_auto(reg, request)
            if response is not None and response.code == "2.05":
                await self.notified(reg, request, response)

    async def _call(self, reg: Registration, request: DeviceRequest) -> DeviceResponse:
        response = await self._server.call(
            reg, request, timeout_s=self._server.config.request_timeout_s
        )
        ops.interpret(request, response, now=_now(self))  # raises for the device's refusal
        return response

    async def _push(self, reg: Registration, job: FirmwareJob) -> None:
        """Write the image to /5/0/0 with Block1 (RFC 7959 2.5): 2.31 Continue per block,
        2.04 for the last; a device asking for smaller blocks gets them."""
        data = await self.image_bytes(job.tenant_id, job.image_id)
        szx, num, sent = self._szx, 0, 0
        uri = _uri(reg, PACKAGE)
        while True:
            start, end, more = block_of(len(data), num, szx)
            msg = Message(code=Code.PUT, payload=data[start:end])
            msg.opt.uri_path = uri
            msg.opt.content_format = CF_OPAQUE
            msg.opt.block1 = (num, more, szx)
            if num == 0:
                msg.opt.size1 = len(data)
            answer = await self._server.send_message(
                reg, msg, timeout_s=self._server.config.request_timeout_s
            )
            self.stats["blocks_pushed"] += 1
            code = dotted(answer.code)
            if more and code == "2.31":
                sent = end
                b1 = answer.opt.block1
                if b1 is not None and b1.size_exponent < szx:  # the device wants smaller
                    szx = b1.size_exponent
                num = sent // (1 << (szx + 4))
                continue
            if not more and code == "2.04":
                self.stats["pushes_completed"] += 1
                log.info("lwm2m.firmware_pushed", device=job.device_id, bytes=len(data))
                return
            raise ops.error_for(code)

    # -- the device's reports ---------------------------------------------------------------
    async def notified(
        self, reg: Registration, request: DeviceRequest, response: DeviceResponse
    ) -> None:
        """A value under /5/0 from the device (first answer or notification)."""
        if request.path.object_id != 5:
            return
        try:
            records = ops.notification_records(request, response, now=_now(self))
        except IngressError:
            return
        values = {r.path: r.value for r in records}
        state, result = values.get(STATE), values.get(UPDATE_RESULT)
        if not isinstance(state, int) and not isinstance(result, int):
            return
        async with self._lock(reg.device_id):  # a state and a result notification together
            job = await self.store.job_for_device(reg.device_id)
            if job is None:
                return
            new, action = on_device_report(
                job,
                state=state if isinstance(state, int) else None,
                result=result if isinstance(result, int) else None,
                now=_now(self),
            )
            if new.status is not job.status or new.error != job.error:
                await self._save(new)
            elif (new.device_state, new.device_result) != (job.device_state, job.device_result):
                await self.store.save_job(new)  # the values shown; no event
            if action is Action.EXECUTE_UPDATE:
                try:
                    await self._call(reg, ops.execute(UPDATE, root=reg.objects.root))
                except IngressError as exc:
                    await self._save(new.failed(f"Execute /5/0/2: {exc.message}", _now(self)))

    async def _save(self, job: FirmwareJob) -> None:
        await self.store.save_job(job)
        log.info(
            "lwm2m.firmware_job", device=job.device_id, job=job.job_id, status=job.status.value
        )
        self._server.events.publish(
            EventKind.FIRMWARE, job.tenant_id, job.device_id, {"job": job.view()}
        )

    # -- pull -----------------------------------------------------------------------------------
    async def image_bytes(self, tenant_id: str, image_id: str) -> bytes:
        data = self._images.get(image_id)
        if data is not None:
            self._images.move_to_end(image_id)
            return data
        image = await self.store.image(tenant_id, image_id)
        data = await self.store.load(image)
        self._images[image_id] = data
        while (
            sum(len(v) for v in self._images.values()) > IMAGE_CACHE_BYTES and len(self._images) > 1
        ):
            self._images.popitem(last=False)
        return data

    async def _job_of_token(self, token: str) -> FirmwareJob | None:
        cached = self._tokens.get(token)
        now = asyncio.get_running_loop().time()
        if cached is not None and now - cached[1] < TOKEN_CACHE_S:
            return cached[0]
        job = await self.store.job_for_token(token)
        if job is None:
            self._tokens.pop(token, None)
            return None
        if len(self._tokens) > 10_000:
            self._tokens.clear()
        self._tokens[token] = (job, now)
        return job

    async def serve_pull(self, session: DeviceSession, msg: Any) -> Message:
        """``GET /fw/<token>`` with Block2 (mounted on the DTLS listener)."""
        if msg.code != Code.GET:
            return Message(code=Code.METHOD_NOT_ALLOWED)
        path = tuple(msg.opt.uri_path)
        try:
            job = await self._job_of_token(path[1]) if len(path) == 2 else None
            if job is None or job.status.final:
                return Message(code=Code.NOT_FOUND)
            ident = session.credential.identity if session.credential is not None else None
            if ident is None or (ident.tenant_id, ident.device_id) != (
                job.tenant_id,
                job.device_id,
            ):
                log.info("lwm2m.firmware_pull_refused", job=job.job_id, session=session.session_id)
                return Message(code=Code.FORBIDDEN)
            data = await self.image_bytes(job.tenant_id, job.image_id)
        except NotFound:
            return Message(code=Code.NOT_FOUND)
        except IngressError:
            return Message(code=Code.SERVICE_UNAVAILABLE)
        b2 = msg.opt.block2
        szx = serving_szx(None if b2 is None else b2.size_exponent, self._szx)
        num = 0 if b2 is None else b2.block_number
        if b2 is not None and b2.size_exponent > szx:  # RFC 7959 2.4: renumber to our size
            num = num * (1 << (b2.size_exponent - szx))
        try:
            start, end, more = block_of(len(data), num, szx)
        except InvalidArgument:
            return Message(code=Code.BAD_OPTION)
        answer = Message(code=Code.CONTENT, payload=data[start:end])
        answer.opt.content_format = CF_OPAQUE
        answer.opt.block2 = (num, more, szx)
        if num == 0:
            answer.opt.size2 = len(data)
        self.stats["blocks_served"] += 1
        return answer


def _now(agent: FirmwareAgent) -> float:
    return agent._server.services.clock()


def _uri(reg: Registration, path: Lwm2mPath) -> tuple[str, ...]:
    return tuple(s for s in reg.objects.root.split("/") if s) + path.uri_path


__all__ = ["FirmwareAgent"]
