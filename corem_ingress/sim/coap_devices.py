"""CoAP over DTLS devices: PSK with tinydtls (aiocoap + DTLSSocket, what constrained devices run).

Each device holds an Observe on ``/down`` for the life of its session: the
broker's close_notify (on revocation) ends that observation with an error, which
is how the device learns its session is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import aiocoap
from aiocoap import Code, Message

from corem_ingress.sim.devices import Target
from corem_ingress.sim.fleet import DeviceError

_CF_JSON = 50


def _see_warning_level_close_notify() -> None:
    """Device-side fix: aiocoap 0.4.17 acts on close_notify only at *fatal* level, but TLS/DTLS
    send it at warning level (RFC 5246 7.2.1), which tinydtls reports as (1, 0) and aiocoap
    only logs ("Unhandled alert level 1 code 0"). Treat it as the close it is, so the device
    learns at once that its session ended instead of at its next request."""
    from aiocoap.transports import tinydtls

    cls: Any = tinydtls.DTLSClientConnection
    if getattr(cls, "_corem_close_notify_patch", False):
        return
    original = cls._event

    def _event(self: Any, level: int, code: int) -> Any:
        if (level, code) == (tinydtls.LEVEL_WARNING, tinydtls.CODE_CLOSE_NOTIFY):
            return self._inject_error(tinydtls.CloseNotifyReceived())
        return original(self, level, code)

    cls._event = _event
    cls._corem_close_notify_patch = True


class CoapPskDevice:
    delivers_on_connect = False

    def __init__(self, name: str, target: Target, psk_identity: str, psk: bytes) -> None:
        self.name = name
        self._base = f"coaps://{target.host}:{target.port}"
        self._identity = psk_identity
        self._psk = psk
        self._ctx: aiocoap.Context | None = None
        self._observe: Any = None
        self._watch: asyncio.Task[None] | None = None
        self._closing = False
        self.closed = asyncio.Event()
        self.closed_at: float | None = None
        self.downlinks: list[bytes] = []

    async def connect(self) -> None:
        _see_warning_level_close_notify()
        self._ctx = await aiocoap.Context.create_client_context(transports=["tinydtls"])
        self._ctx.client_credentials.load_from_dict(
            {
                f"{self._base}/*": {
                    "dtls": {
                        "psk": {"hex": self._psk.hex()},
                        "client-identity": {"ascii": self._identity},
                    }
                }
            }
        )
        request = Message(code=Code.GET, uri=f"{self._base}/down", observe=0)
        self._observe = self._ctx.request(request)
        try:
            first = await asyncio.wait_for(self._observe.response, timeout=15)
        except TimeoutError:
            await self.close()
            raise DeviceError("timeout") from None
        except Exception as exc:
            await self.close()
            raise DeviceError("refused", exc.__class__.__name__) from None
        if not first.code.is_successful():
            await self.close()
            raise DeviceError(f"coap_{first.code.dotted}")
        self._watch = asyncio.ensure_future(self._watch_observation())

    async def _watch_observation(self) -> None:
        try:
            async for notification in self._observe.observation:
                self.downlinks.append(notification.payload)
        except Exception:  # noqa: S110 - CloseNotifyReceived and friends: the session ended
            pass
        if not self.closed.is_set():
            if not self._closing:
                self.closed_at = time.time()
            self.closed.set()

    async def send(self, seq: int) -> None:
        if self._ctx is None or self.closed.is_set():
            raise DeviceError("closed")
        payload = json.dumps({"seq": seq, "t": time.time()}).encode()
        request = Message(
            code=Code.POST,
            uri=f"{self._base}/up/telemetry",
            payload=payload,
            content_format=_CF_JSON,
        )
        try:
            response = await asyncio.wait_for(self._ctx.request(request).response, timeout=15)
        except TimeoutError:
            raise DeviceError("timeout") from None
        except Exception as exc:
            raise DeviceError("io", exc.__class__.__name__) from None
        if response.code != Code.CHANGED:
            raise DeviceError(f"coap_{response.code.dotted}")

    async def close(self) -> None:
        self._closing = True
        if self._observe is not None:
            with contextlib.suppress(Exception):
                self._observe.observation.cancel()
        if self._watch is not None:
            self._watch.cancel()
        if self._ctx is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ctx.shutdown(), timeout=5)
