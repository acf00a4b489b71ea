"""CoAP over DTLS devices.

* ``CoapPskDevice``: PSK with tinydtls (aiocoap + DTLSSocket, what constrained devices run);
  stock tinydtls caps PSKs at 16 bytes (``TINYDTLS_MAX_PSK``): ``psk_device`` picks the
  OpenSSL one for longer keys (the broker's default PSKs are 32 bytes).
* ``CoapCertDevice``: a device certificate (ECDHE-ECDSA) over OpenSSL, through the
  in-process DTLS client of ``corem_ingress.sim.dtls_client``;
  ``CoapOpenSslPskDevice``: PSK over the same OpenSSL client (any PSK length).

Each device holds an Observe on ``/down`` for the life of its session: the
broker's close_notify (on revocation) ends that session, which is how the device
learns it is gone (``closed_at``, wall clock, taken when the alert arrives).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any

import aiocoap
from aiocoap import ACK, CON, Code, Message
from OpenSSL import SSL

from corem_ingress.sim.devices import Target
from corem_ingress.sim.dtls_client import (
    AsyncDtlsClient,
    cert_context,
    failure_reason,
    psk_context,
)
from corem_ingress.sim.fleet import DeviceError

_CF_JSON = 50
#: tinydtls's DTLS_PSK_MAX_KEY_LEN as DTLSSocket builds it: it refuses longer PSKs itself.
TINYDTLS_MAX_PSK = 16
#: How long a device waits for its DTLS handshake (and the Observe's first answer).
CONNECT_TIMEOUT_S = 15.0
#: What a handshake that got no answer at all means, for the run's ``errors``.
NO_ANSWER = (
    "no answer to the DTLS handshake: is the broker up, and is this address not blocked "
    "by its failed-authentication throttle (limits.auth_fail_*)?"
)


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
            first = await asyncio.wait_for(self._observe.response, timeout=CONNECT_TIMEOUT_S)
        except TimeoutError:
            await self.close()
            raise DeviceError("timeout", NO_ANSWER) from None
        except Exception as exc:
            await self.close()
            raise DeviceError("refused", f"tinydtls: {exc.__class__.__name__} {exc}") from None
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


#: RFC 7252 4.8 transmission parameters (ACK_RANDOM_FACTOR left out: one device, loopback).
_ACK_TIMEOUT = 2.0
_MAX_RETRANSMIT = 4


class CoapOpenSslDevice:
    """CoAP over the in-process OpenSSL DTLS client: CON requests with retransmission,
    an Observe on ``/down`` (notifications acknowledged), close_notify = end of session.

    ``cid``: ask for a DTLS Connection ID (RFC 9146; these bytes, ``b""`` asks the server
    to send none). ``rebind_every_s`` > 0: the device's NAT rebinds that often (checked
    before each uplink). With a negotiated CID the device goes on from a new source port
    (``AsyncDtlsClient.rebind``) in the same session; without, it does what such a device
    must: a new handshake from the new port (and a new Observe), the old session left to
    the server's idle timeout. ``handshakes`` and ``rebindings`` count what it did."""

    delivers_on_connect = False

    def __init__(
        self,
        name: str,
        target: Target,
        ctx_factory: Any,
        *,
        cid: bytes | None = None,
        rebind_every_s: float = 0.0,
    ) -> None:
        self.name = name
        self._target = target
        self._ctx_factory = ctx_factory
        self._cid = cid
        self._rebind_every_s = rebind_every_s
        self._rebind_at = 0.0
        self.handshakes = 0
        self.rebindings = 0
        #: Did the last handshake negotiate a Connection ID?
        self.cid_negotiated = False
        self._rebinding = False
        self._dtls: AsyncDtlsClient | None = None
        self._pump: asyncio.Task[None] | None = None
        self._waiting: dict[bytes, asyncio.Future[Message]] = {}
        self._acked: set[int] = set()
        self._observe_token = b""
        self._mid = int.from_bytes(os.urandom(2), "big")
        self._closing = False
        self.closed = asyncio.Event()
        self.closed_at: float | None = None
        self.downlinks: list[bytes] = []

    async def connect(self) -> None:
        try:
            ctx: SSL.Context = self._ctx_factory()
        except (OSError, SSL.Error) as exc:
            raise DeviceError("tls", exc.__class__.__name__) from None
        try:
            self._dtls = await AsyncDtlsClient.connect(
                ctx,
                self._target.port,
                host=self._target.host,
                timeout=CONNECT_TIMEOUT_S,
                raise_socket_errors=True,
                cid=self._cid,
            )
        except TimeoutError:
            raise DeviceError("timeout", NO_ANSWER) from None
        except OSError as exc:
            raise DeviceError("io", f"{exc.__class__.__name__}: {exc}") from None
        if not self._dtls.client.done:
            self._dtls.close()
            raise DeviceError("refused", failure_reason(self._dtls.client.failed))
        self.handshakes += 1
        self.cid_negotiated = self._dtls.client.cid is not None
        self._rebind_at = time.monotonic() + self._rebind_every_s
        self._pump = asyncio.ensure_future(self._receive_loop())
        self._observe_token = os.urandom(4)
        try:
            first = await self._request(Code.GET, ("down",), token=self._observe_token, observe=0)
        except DeviceError:
            await self.close()
            raise
        if not first.code.is_successful():
            await self.close()
            raise DeviceError(f"coap_{first.code.dotted}")

    def _next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    async def _request(
        self,
        code: Code,
        path: tuple[str, ...],
        payload: bytes = b"",
        *,
        token: bytes | None = None,
        observe: int | None = None,
        content_format: int | None = None,
    ) -> Message:
        dtls = self._dtls
        if dtls is None or self.closed.is_set():
            raise DeviceError("closed")
        m = Message(code=code, payload=payload)
        m.mtype, m.mid, m.token = CON, self._next_mid(), token or os.urandom(4)
        m.opt.uri_path = path
        if observe is not None:
            m.opt.observe = observe
        if content_format is not None:
            m.opt.content_format = content_format
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[m.token] = fut
        data = m.encode()
        wait = _ACK_TIMEOUT
        try:
            for _ in range(_MAX_RETRANSMIT + 1):
                if self.closed.is_set():
                    raise DeviceError("closed")
                dtls.send(data)
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), timeout=wait)
                except TimeoutError:
                    if m.mid in self._acked:  # separate response coming: stop retransmitting
                        return await asyncio.wait_for(fut, timeout=15)
                    wait *= 2
            raise DeviceError("timeout")
        except TimeoutError:
            raise DeviceError("timeout") from None
        except ConnectionError:
            raise DeviceError("closed") from None
        finally:
            self._waiting.pop(m.token, None)
            self._acked.discard(m.mid)

    async def _receive_loop(self) -> None:
        dtls = self._dtls
        assert dtls is not None
        try:
            while True:
                try:
                    data = await dtls.recv(timeout=3600)
                except TimeoutError:
                    continue
                self._on_message(data)
        except ConnectionError:
            pass  # close_notify (client.closed) or a fatal alert (client.failed)
        finally:
            # A session being replaced (``_rebind``) has not ended.
            if not self._rebinding and not self.closed.is_set():
                if not self._closing:
                    self.closed_at = time.time()
                self.closed.set()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("closed"))

    def _on_message(self, data: bytes) -> None:
        try:
            m = Message.decode(data)
        except Exception:  # a datagram it cannot parse: ignored, as a device would
            return
        if m.mtype == CON and self._dtls is not None:
            ack = Message(code=Code.EMPTY)
            ack.mtype, ack.mid = ACK, m.mid
            self._dtls.send(ack.encode())
        if m.code == Code.EMPTY:
            if m.mtype == ACK:
                self._acked.add(m.mid)
            return
        fut = self._waiting.get(m.token)
        if fut is not None and not fut.done():
            fut.set_result(m)
        elif m.token == self._observe_token and m.opt.observe is not None:
            self.downlinks.append(m.payload)

    async def _rebind(self) -> None:
        """The NAT gave the device a new source port."""
        dtls = self._dtls
        assert dtls is not None
        self.rebindings += 1
        self._rebind_at = time.monotonic() + self._rebind_every_s
        if dtls.client.cid is not None:
            await dtls.rebind()
            return
        # No CID: the old session cannot be reached any more; handshake again.
        self._rebinding = True
        try:
            if self._pump is not None:
                self._pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._pump
        finally:
            self._rebinding = False
        if dtls.transport is not None:
            dtls.transport.close()  # no close_notify: it would not get through either
        self._dtls, self._pump = None, None
        await self.connect()

    async def send(self, seq: int) -> None:
        if self._rebind_every_s > 0 and time.monotonic() >= self._rebind_at:
            await self._rebind()
        payload = json.dumps({"seq": seq, "t": time.time()}).encode()
        response = await self._request(
            Code.POST, ("up", "telemetry"), payload, content_format=_CF_JSON
        )
        if response.code != Code.CHANGED:
            raise DeviceError(f"coap_{response.code.dotted}")

    async def close(self) -> None:
        self._closing = True
        if self._dtls is not None:
            self._dtls.close()  # close_notify unless the server already sent one
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
        if not self.closed.is_set():
            self.closed.set()


class CoapCertDevice(CoapOpenSslDevice):
    """A device certificate from the simulator's CA; the server's chain checked against
    ``target.server_ca``."""

    def __init__(
        self, name: str, target: Target, cert_path: str, key_path: str, **dtls: Any
    ) -> None:
        super().__init__(
            name, target, lambda: cert_context(cert_path, key_path, target.server_ca), **dtls
        )


class CoapOpenSslPskDevice(CoapOpenSslDevice):
    """PSK over OpenSSL: no 16-byte cap (the broker's default 32-byte PSKs work)."""

    def __init__(
        self, name: str, target: Target, psk_identity: str, psk: bytes, **dtls: Any
    ) -> None:
        super().__init__(name, target, lambda: psk_context(psk_identity.encode(), psk), **dtls)


def psk_device_stack(psk: bytes) -> str:
    """Which device stack a PSK device runs: tinydtls where it can hold the key."""
    return "tinydtls" if len(psk) <= TINYDTLS_MAX_PSK else "openssl"


def psk_device(
    name: str, target: Target, psk_identity: str, psk: bytes
) -> CoapPskDevice | CoapOpenSslPskDevice:
    """tinydtls (aiocoap + DTLSSocket), what constrained devices run, when the key fits in
    it; otherwise the OpenSSL device (tinydtls would refuse the key itself)."""
    if psk_device_stack(psk) == "tinydtls":
        return CoapPskDevice(name, target, psk_identity, psk)
    return CoapOpenSslPskDevice(name, target, psk_identity, psk)
