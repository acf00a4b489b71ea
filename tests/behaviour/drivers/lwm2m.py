"""LwM2M 1.1 with a PSK: the simulator's LwM2M client (``sim/lwm2m_device.py``) over the
OpenSSL DTLS client. Connecting is the DTLS handshake plus Register; an uplink is an
LwM2M Send (``POST /dp``, SenML JSON) of the temperature resource set to the number."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from aiocoap.numbers.codes import Code

from corem_ingress.core.causes import Cause
from corem_ingress.sim.devices import Target
from corem_ingress.sim.fleet import DeviceError
from corem_ingress.sim.lwm2m_device import Lwm2mDevice
from tests.behaviour.drivers.base import CALL_TIMEOUT_S, Device, Outcome, Refused, Session
from tests.behaviour.drivers.coap import (
    CLOSE_NOTIFY,
    CoapPskDriver,
    answer_of,
    malformed_requests,
)
from tests.lwm2m.conftest import Provisioned, provision

TEMPERATURE = "/3303/0/5700"
CF_SENML_JSON = 110


class Lwm2mSession(Session):
    def __init__(self, device: Lwm2mDevice) -> None:
        self.device = device

    async def uplink(self, n: int, *, timeout: float = CALL_TIMEOUT_S) -> Outcome:
        self.device.client.set_temperature(float(n))
        try:
            async with asyncio.timeout(timeout):
                resp = await self.device.send_dp([TEMPERATURE])
        except TimeoutError:
            return Outcome(False, "no answer", closed=True)
        except DeviceError as exc:
            return Outcome(False, "closed" if exc.cause == "closed" else "no answer", closed=True)
        return Outcome(resp.code == Code.CHANGED, answer_of(resp))

    async def ended_by_server(self, *, timeout: float) -> str | None:
        channel = self.device.channel
        try:
            async with asyncio.timeout(timeout):
                await self.device.closed.wait()
        except TimeoutError:
            return None
        assert channel is not None
        return CLOSE_NOTIFY if channel.dtls.client.closed else f"failed: {channel.dtls.client}"

    async def close(self) -> None:
        await self.device.close()


class Lwm2mPskDriver(CoapPskDriver):
    name = "lwm2m-psk"
    # The Register/Send path stores its own uplinks; no automatic observations.
    extra_sections: ClassVar[dict[str, dict[str, Any]]] = {"lwm2m": {"observe_paths": []}}
    #: The CoAP driver's two malformed options on a Send, then a Send of broken SenML.
    bad_input_answers = (*CoapPskDriver.bad_input_answers, Cause.PROTOCOL_ERROR.coap)

    async def provision(self) -> Device:
        p = await provision(self.registry, self.certs, "psk", self.tenant)
        return Device(self.tenant, p.device_id, p, p.device_id)

    def unknown(self) -> Device:
        name = self.next_name()
        identity = f"{self.tenant}:{name}"  # the registry's form, never provisioned
        return Device(self.tenant, "", Provisioned("", name, "", identity, os.urandom(32)))

    def refusal(self, cause: Cause) -> str:
        return "LwM2M refused"  # the DTLS handshake fails: no Register is ever sent

    def lwm2m_device(self, device: Device) -> Lwm2mDevice:
        p: Provisioned = device.credential
        assert p.psk_identity is not None and p.psk is not None
        return Lwm2mDevice(
            p.hardware_id,
            Target("127.0.0.1", self.port, str(self.certs.ca_pem)),
            endpoint=p.hardware_id,
            psk_identity=p.psk_identity,
            psk=p.psk,
        )

    async def _connect(self, device: Device, timeout: float) -> Session:
        dev = self.lwm2m_device(device)
        try:
            async with asyncio.timeout(timeout):
                await dev.connect()  # handshake + Register (2.01)
        except DeviceError as exc:
            await dev.close()
            raise Refused(f"LwM2M {exc.cause}", str(exc)) from None
        except TimeoutError:
            await dev.close()
            raise Refused("no answer") from None
        return Lwm2mSession(dev)

    async def bad_input(self, device: Device) -> tuple[str, ...]:
        session = await self.connect(device)
        assert isinstance(session, Lwm2mSession) and session.device.channel is not None
        send = session.device.client.send_payload([TEMPERATURE])[1]
        answers = await malformed_requests(session.device.channel, ("dp",), send, CF_SENML_JSON)
        resp = await session.device.request(
            Code.POST, ("dp",), payload=b'[{"n":"/3303/0/5700","v":', content_format=CF_SENML_JSON
        )
        return (*answers, answer_of(resp))

    def mark(self, fields: Mapping[str, str]) -> int | None:
        payload: Any = json.loads(fields["payload"])
        if fields.get("transport") != "lwm2m" or payload.get("source") != "send":
            return None
        (value,) = [r["value"] for r in payload["records"] if r["path"] == TEMPERATURE]
        return int(value)
