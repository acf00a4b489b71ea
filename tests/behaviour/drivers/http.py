"""HTTP with an API key: aiohttp, one keep-alive client session per device.

HTTP has no connection to authenticate: a device authenticates on each request, and
its only request is an uplink. ``connect`` therefore posts one (number ``PROBE``), as
the simulator's HTTP device does; a refusal is that request's answer.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp

from corem_ingress.adapters import http
from corem_ingress.core import api_keys
from corem_ingress.core.causes import Cause
from corem_ingress.core.identity import CredentialKind
from tests.behaviour.drivers.base import CALL_TIMEOUT_S, Device, Driver, Outcome, Refused, Session

#: The uplink number of the request that authenticates a session.
PROBE = -1


class HttpSession(Session):
    def __init__(self, driver: HttpDriver, device: Device) -> None:
        self.url = f"http://127.0.0.1:{driver.port}/api/v1/devices/{device.device_id}/uplink"
        self.key = str(device.credential)
        self.client = aiohttp.ClientSession()

    async def post(self, body: bytes, timeout: float) -> tuple[int, dict[str, Any]]:
        """One request: (status, JSON body); status 0 when there was no answer."""
        try:
            async with self.client.post(
                self.url,
                data=body,
                headers={"X-API-Key": self.key, "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                reply = await resp.json(content_type=None)
                if resp.status >= 400:
                    # Every refusal is the API's JSON error; a 503 says when to retry.
                    assert set(reply) == {"error"}, reply
                    if resp.status == 503:
                        assert int(resp.headers["Retry-After"]) > 0
                    if resp.status == 401:
                        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                return resp.status, reply
        except (aiohttp.ClientError, TimeoutError):
            return 0, {}

    async def uplink(self, n: int, *, timeout: float = CALL_TIMEOUT_S) -> Outcome:
        body = b'{"kind":"telemetry","payload":{"n":%d}}' % n
        status, _reply = await self.post(body, timeout)
        return Outcome(status == 202, f"HTTP {status}")

    async def ended_by_server(self, *, timeout: float) -> str | None:
        """Nothing to close: the next request is refused (polled; bounded)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    outcome = await self.uplink(PROBE, timeout=timeout)
                    if outcome.answer == "HTTP 401":
                        return outcome.answer
                    await asyncio.sleep(0.02)
        except TimeoutError:
            return None

    async def close(self) -> None:
        await self.client.close()


class HttpDriver(Driver):
    name = "http"
    metric_transport = "http"
    listener_name = "http"
    kind = CredentialKind.API_KEY
    unstored_answer = f"HTTP {Cause.STORAGE_UNAVAILABLE.http}"
    retry_answers = frozenset({unstored_answer})
    revoked_answer = f"HTTP {Cause.UNKNOWN_OR_REVOKED.http}"
    bad_input_answers = (f"HTTP {Cause.PROTOCOL_ERROR.http}",)

    def sections(self) -> tuple[list[Any], dict[str, dict[str, Any]]]:
        return [http.build], {}

    async def provision(self) -> Device:
        out = await self.registry.provision(
            self.tenant, self.next_name(), CredentialKind.API_KEY, actor="test"
        )
        assert out.api_key is not None
        return Device(self.tenant, out.device.device_id, out.api_key.api_key, out.api_key.key_id)

    def unknown(self) -> Device:
        return Device(self.tenant, str(uuid.uuid4()), api_keys.generate())

    async def _connect(self, device: Device, timeout: float) -> Session:
        session = HttpSession(self, device)
        outcome = await session.uplink(PROBE, timeout=timeout)
        if not outcome.acked:
            await session.close()
            raise Refused(outcome.answer)
        return session

    def refusal(self, cause: Cause) -> str:
        return f"HTTP {cause.http}"

    async def bad_input(self, device: Device) -> tuple[str, ...]:
        session = await self.connect(device)
        assert isinstance(session, HttpSession)
        status, reply = await session.post(b'{"kind": "telemetry", "payload": {"n": 1', 5.0)
        assert status != 400 or reply["error"]["code"] == "INVALID_ARGUMENT", reply
        return (f"HTTP {status}",)
