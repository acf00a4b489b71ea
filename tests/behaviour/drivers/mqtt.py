"""MQTT 3.1.1 and 5.0 over TLS: paho-mqtt devices (QoS 1) with a client certificate or an
API key as the password; malformed packets from the repo's raw MQTT-over-TLS client.

MQTT 5 is a subclass: ``protocol = paho.MQTTv5``, its reason codes from ``Cause.mqtt5``
(``cause_code``) and its CONNECT bytes for the raw client (``raw_connect``).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import paho.mqtt.client as paho

from corem_ingress.adapters import mqtt
from corem_ingress.adapters.mqtt import codec
from corem_ingress.core import api_keys
from corem_ingress.core.causes import Cause
from corem_ingress.core.identity import CredentialKind
from tests.behaviour.drivers.base import CALL_TIMEOUT_S, Device, Driver, Outcome, Refused, Session
from tests.mqtt.conftest import (
    DeviceCert,
    Pki,
    RawClient,
    client_ssl,
    connect_packet,
    mqtt_section,
    paho_connect,
    provision_key,
    provision_x509,
)

CLOSED = "connection closed"
#: A PUBLISH whose remaining length never ends (MQTT 3.1.1 §2.2.3: at most four bytes).
MALFORMED_PUBLISH = b"\x30\xff\xff\xff\xff\x01"


class MqttSession(Session):
    def __init__(self, client: Any, device_id: str) -> None:
        self.client = client
        self.topic = f"devices/{device_id}/up/telemetry"
        #: The reason code of a DISCONNECT the broker sent (MQTT 5 only).
        self.server_reason: int | None = None
        client.on_disconnect = self._on_disconnect

    def _on_disconnect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if flags.is_disconnect_packet_from_server:
            self.server_reason = reason.value

    def connected(self) -> bool:
        # paho 2.2 leaves is_connected() True after a server DISCONNECT (MQTT 5); the
        # socket it closed says the truth.
        return bool(self.client.is_connected()) and self.client.socket() is not None

    async def uplink(self, n: int, *, timeout: float = CALL_TIMEOUT_S) -> Outcome:
        if not self.connected():
            return Outcome(False, CLOSED, closed=True)
        info = self.client.publish(self.topic, b'{"n":%d}' % n, qos=1)
        try:
            async with asyncio.timeout(timeout):
                while not info.is_published():  # paho's network thread sets it on PUBACK
                    if not self.connected():
                        return Outcome(False, f"no PUBACK, {CLOSED}", closed=True)
                    await asyncio.sleep(0.005)
        except TimeoutError:
            return Outcome(False, "no PUBACK")
        return Outcome(True, "PUBACK")

    async def ended_by_server(self, *, timeout: float) -> str | None:
        try:
            async with asyncio.timeout(timeout):
                while self.connected():
                    await asyncio.sleep(0.01)
        except TimeoutError:
            return None
        if self.server_reason is not None:
            return f"DISCONNECT 0x{self.server_reason:02x}, {CLOSED}"
        return CLOSED

    async def close(self) -> None:
        self.client.disconnect()  # first: it also wakes paho's network thread to end
        await asyncio.to_thread(self.client.loop_stop)


class MqttDriver(Driver):
    """MQTT 3.1.1, client certificate (``client_auth`` required)."""

    name = "mqtt-cert"
    metric_transport = "mqtt"
    listener_name = "mqtt"
    kind = CredentialKind.X509
    fixtures = ("pki",)
    protocol: ClassVar[int] = paho.MQTTv311
    unstored_answer = f"no PUBACK, {CLOSED}"
    retry_answers = frozenset({unstored_answer, "no PUBACK", CLOSED})
    revoked_answer = CLOSED
    bad_input_answers = (CLOSED,)
    client_auth: ClassVar[str] = "required"

    @property
    def pki(self) -> Pki:
        pki: Pki = self.fx["pki"]
        return pki

    def sections(self) -> tuple[list[Any], dict[str, dict[str, Any]]]:
        return [mqtt.build], {"mqtt": mqtt_section(self.pki, client_auth=self.client_auth)}

    async def provision(self) -> Device:
        dev = await provision_x509(self.registry, self.pki, self.tenant, self.next_name())
        assert dev.cert is not None
        return Device(self.tenant, dev.device_id, dev.cert, dev.cert.fingerprint)

    def unknown(self) -> Device:
        cert = self.pki.device(self.next_name())  # signed by the trusted CA, never registered
        return Device(self.tenant, "", cert)

    def credential_args(self, device: Device) -> dict[str, Any]:
        return {"cert": device.credential}

    def cause_code(self, cause: Cause) -> int:
        return cause.connack

    def refusal(self, cause: Cause) -> str:
        return f"CONNACK {self.cause_code(cause)}"

    async def _connect(self, device: Device, timeout: float) -> Session:
        rc, client = await asyncio.to_thread(
            paho_connect,
            self.port,
            self.pki,
            client_id=device.device_id,
            timeout=timeout,
            protocol=self.protocol,
            reconnect=False,
            **self.credential_args(device),
        )
        session = MqttSession(client, device.device_id)
        if rc != 0:
            await session.close()
            raise Refused("TLS handshake failed" if rc is None else f"CONNACK {rc}")
        return session

    def raw_connect(self, device: Device) -> bytes:
        return connect_packet(device.device_id)

    def raw_cert(self, device: Device) -> DeviceCert | None:
        cert: DeviceCert = device.credential
        return cert

    async def bad_input(self, device: Device) -> tuple[str, ...]:
        raw = await RawClient.open(self.port, client_ssl(self.pki, self.raw_cert(device)))
        try:
            await raw.send(self.raw_connect(device))
            connack = await raw.read_packet()
            # CONNACK's fourth byte is the return (3.1.1) or reason (5.0) code.
            assert connack is not None and connack[3] == 0, connack
            await raw.send(MALFORMED_PUBLISH)
            return (CLOSED if await raw.closed_by_server() else "still open",)
        finally:
            await raw.close()


class MqttApiKeyDriver(MqttDriver):
    """MQTT 3.1.1, API key as the password on a listener where certificates are optional."""

    name = "mqtt-key"
    kind = CredentialKind.API_KEY
    client_auth = "optional"

    async def provision(self) -> Device:
        dev = await provision_key(self.registry, self.tenant, self.next_name())
        (cred,) = await self.registry.credentials(self.tenant, dev.device_id)
        return Device(self.tenant, dev.device_id, dev.api_key, cred.credential_id)

    def unknown(self) -> Device:
        return Device(self.tenant, "", api_keys.generate())

    def credential_args(self, device: Device) -> dict[str, Any]:
        return {"password": device.credential}

    def raw_connect(self, device: Device) -> bytes:
        return connect_packet(device.device_id, password=str(device.credential))

    def raw_cert(self, device: Device) -> DeviceCert | None:
        return None


def _connect5(device: Device, password: str | None = None) -> bytes:
    return codec.encode_connect(
        codec.Connect(
            5,
            device.device_id,
            True,
            60,
            None,
            password.encode() if password is not None else None,
        )
    )


class _Mqtt5:
    """What MQTT 5.0 changes in a driver: paho's MQTTv5, reason codes from ``Cause.mqtt5``,
    and the revocation's DISCONNECT 0x98 (administrative action: "revoked", not
    "network")."""

    protocol = paho.MQTTv5
    revoked_answer = f"DISCONNECT 0x98, {CLOSED}"

    def cause_code(self, cause: Cause) -> int:
        return cause.mqtt5


class Mqtt5Driver(_Mqtt5, MqttDriver):
    """MQTT 5.0, client certificate."""

    name = "mqtt5-cert"

    def raw_connect(self, device: Device) -> bytes:
        return _connect5(device)


class Mqtt5ApiKeyDriver(_Mqtt5, MqttApiKeyDriver):
    """MQTT 5.0, API key as the password (MQTT 5 needs no user name with it)."""

    name = "mqtt5-key"

    def raw_connect(self, device: Device) -> bytes:
        return _connect5(device, str(device.credential))
