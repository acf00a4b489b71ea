"""The device side of the LwM2M server, transport-agnostic: ``/rd`` and ``/dp`` requests in,
CoAP reply code out; notifications in, uplinks out.

This is what the CoAP glue calls for a request on a DTLS session; it sees no socket and no
Redis: registrations go through a ``RegistrationStore`` (``store.lwm2m.Lwm2mStore`` is
one) and uplinks through ``append`` (``store.uplinks.UplinkStore.append``), as the
existing device site does. A registration is stored before the device hears 2.01, an
uplink appended before it hears 2.04.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from corem_ingress.core.errors import IngressError, NotFound, coap_max_age
from corem_ingress.core.uplink import Uplink
from corem_ingress.lwm2m.model import ObjectModel
from corem_ingress.lwm2m.objects import DEFAULT_MODEL
from corem_ingress.lwm2m.operations import (
    DeviceRequest,
    DeviceResponse,
    notification_records,
)
from corem_ingress.lwm2m.registration import (
    RD,
    Event,
    Outcome,
    Peer,
    RegisterRequest,
    Registrar,
    Registration,
    parse_request,
)
from corem_ingress.lwm2m.reporting import DP, parse_send, uplink

log = structlog.get_logger("corem.lwm2m")


class RegistrationStore(Protocol):
    async def get(
        self, registration_id: str, *, include_expired: bool = False
    ) -> Registration | None: ...

    async def get_by_device(
        self, device_id: str, *, include_expired: bool = False
    ) -> Registration | None: ...

    async def apply(self, outcome: Outcome) -> None: ...


@dataclass(frozen=True, slots=True)
class DeviceReply:
    """The CoAP response to send: code ("2.01", "4.03", ...) and Location-Path segments."""

    code: str
    location_path: tuple[str, ...] = ()
    #: Max-Age (seconds) to send with the reply, e.g. with 4.29 when a rate limit refused it.
    max_age: int | None = None


class Lwm2mDeviceService:
    def __init__(
        self,
        registrar: Registrar,
        store: RegistrationStore,
        append: Callable[[Uplink], Awaitable[str]],
        *,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[Event], None] | None = None,
        model: ObjectModel = DEFAULT_MODEL,
        unavailable_max_age_s: int = 5,
    ) -> None:
        self.registrar = registrar
        #: Max-Age of a 5.03 (not stored: send again after it), as on the CoAP site's /up.
        self._unavailable_max_age_s = unavailable_max_age_s
        self._store = store
        self._append = append
        self._clock = clock
        self._on_event = on_event
        self.model = model

    @staticmethod
    def handles(uri_path: Sequence[str]) -> bool:
        """Whether a device request belongs here (the site routes ``/rd…`` and ``/dp``)."""
        return bool(uri_path) and uri_path[0] in (RD, DP)

    async def handle(
        self,
        peer: Peer,
        method: str,
        uri_path: Sequence[str],
        uri_query: Sequence[str],
        content_format: int | None,
        payload: bytes,
    ) -> DeviceReply:
        """Register / Update / De-register / Send. Never raises an ``IngressError``: a
        refusal is its reply code (and nothing is stored)."""
        try:
            if tuple(uri_path[:1]) == (DP,):
                return await self._send(peer, method, uri_path, content_format, payload)
            request = parse_request(method, uri_path, uri_query, content_format, payload)
            self.registrar.check_peer(peer)
            if isinstance(request, RegisterRequest):
                current = await self._store.get_by_device(
                    peer.identity.device_id, include_expired=True
                )
            else:
                current = await self._store.get(request.registration_id)
            outcome = self.registrar.handle(request, peer, current, now=self._clock())
            await self._store.apply(outcome)
        except IngressError as exc:
            log.info(
                "lwm2m.refused",
                device=peer.identity.device_id,
                code=exc.coap_code,
                reason=exc.reason,
            )
            return DeviceReply(
                exc.coap_code, max_age=coap_max_age(exc, self._unavailable_max_age_s)
            )
        if self._on_event is not None:
            self._on_event(outcome.event)
        return DeviceReply(outcome.reply.code, outcome.reply.location_path)

    async def _send(
        self,
        peer: Peer,
        method: str,
        uri_path: Sequence[str],
        content_format: int | None,
        payload: bytes,
    ) -> DeviceReply:
        self.registrar.check_peer(peer)
        now = self._clock()
        records = parse_send(method, uri_path, content_format, payload, now=now, model=self.model)
        reg = await self._store.get_by_device(peer.identity.device_id)
        if reg is None:
            raise NotFound("Send needs a registration", reason="send without registration")
        await self._append(uplink(reg, records, source="send", path=None, now=now))
        return DeviceReply("2.04")

    async def notification(
        self, registration: Registration, observe: DeviceRequest, response: DeviceResponse
    ) -> str:
        """One Observe notification -> uplink appended; returns the stream entry id.

        Raises ``InvalidArgument`` for an undecodable notification (the glue logs it and
        keeps the observation), ``Unavailable`` if the uplink could not be stored.
        """
        now = self._clock()
        records = notification_records(observe, response, now=now, model=self.model)
        return await self._append(
            uplink(registration, records, source="notify", path=observe.path, now=now)
        )


__all__ = ["DeviceReply", "Lwm2mDeviceService", "RegistrationStore"]
