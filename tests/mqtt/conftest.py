"""MQTT test fixtures: certificates in tmp_path, provisioned devices, a started node."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from corem_ingress import devcerts
from corem_ingress.adapters import mqtt
from corem_ingress.core.identity import CredentialKind
from corem_ingress.store.registry import Registry

MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "mosquitto_pub"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "mosquitto_sub"


@dataclass
class Pki:
    dir: Path
    ca: devcerts.Issued
    ca_file: Path
    server_cert: Path
    server_key: Path

    def device(self, name: str, *, self_signed: bool = False, **kw: Any) -> DeviceCert:
        issued = devcerts.issue(None if self_signed else self.ca, name, **kw)
        cert, key = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        issued.write(cert, key)
        return DeviceCert(issued, cert, key)


@dataclass
class DeviceCert:
    issued: devcerts.Issued
    cert: Path
    key: Path

    @property
    def fingerprint(self) -> str:
        return self.issued.fingerprint

    @property
    def pem(self) -> str:
        return self.issued.cert_pem.decode()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = devcerts.make_ca()
    ca.write(d / "ca.pem", d / "ca.key")
    server = devcerts.issue(ca, "localhost", server=True)
    server.write(d / "server.pem", d / "server.key")
    return Pki(d, ca, d / "ca.pem", d / "server.pem", d / "server.key")


def mqtt_section(pki: Pki, **extra: object) -> dict[str, object]:
    return {
        "server_cert": str(pki.server_cert),
        "server_key": str(pki.server_key),
        "client_ca_files": [str(pki.ca_file)],
        **extra,
    }


@dataclass
class Device:
    tenant: str
    device_id: str
    cert: DeviceCert | None = None
    api_key: str | None = None


async def provision_x509(registry: Registry, pki: Pki, tenant: str, hw: str, **kw: Any) -> Device:
    cert = pki.device(f"{tenant}-{hw}", **kw)
    await registry.add_ca(tenant, pki.ca.cert_pem, actor="test")  # the tenant's trust anchor
    out = await registry.provision(tenant, hw, CredentialKind.X509, actor="test", cert_pem=cert.pem)
    return Device(tenant, out.device.device_id, cert=cert)


async def provision_key(registry: Registry, tenant: str, hw: str) -> Device:
    out = await registry.provision(tenant, hw, CredentialKind.API_KEY, actor="test")
    assert out.api_key is not None
    return Device(tenant, out.device.device_id, api_key=out.api_key.api_key)


@pytest.fixture
async def mqtt_node(start_node, pki):  # type: ignore[no-untyped-def]
    """Factory: ``await mqtt_node(**mqtt_overrides)`` -> (node, listener)."""

    async def start(**extra: object):  # type: ignore[no-untyped-def]
        node = await start_node([mqtt.build], mqtt=mqtt_section(pki, **extra))
        (listener,) = node.listeners
        return node, listener

    return start


# -- mosquitto clients ------------------------------------------------------------------------
def tls_args(pki: Pki, dev: Device | None, cert: DeviceCert | None = None) -> list[str]:
    args = ["--cafile", str(pki.ca_file), "-h", "127.0.0.1"]
    c = cert or (dev.cert if dev else None)
    if c is not None:
        args += ["--cert", str(c.cert), "--key", str(c.key)]
    return args


async def run(cmd: Sequence[str], *, timeout: float = 20) -> tuple[int, str]:
    """Run a client to completion (bounded); returns (exit code, stdout+stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def client_ssl(pki: Pki, cert: DeviceCert | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


# -- a raw MQTT-over-TLS client (exact bytes; for refusals, garbage and flow control) ----------
class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = b""

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext | None) -> RawClient:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_packet(self, timeout: float = 10) -> bytes | None:
        """One whole packet, or None when the server closed the connection."""
        from corem_ingress.adapters.mqtt import codec

        while True:
            framed = codec.frame(self.buf, 1 << 28)
            if framed is not None and len(self.buf) >= framed[2]:
                packet, self.buf = self.buf[: framed[2]], self.buf[framed[2] :]
                return packet
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            except (ConnectionError, ssl.SSLError):
                return None
            if not chunk:
                return None
            self.buf += chunk

    async def closed_by_server(self, timeout: float = 10) -> bool:
        """True once the server closes (anything it sends first is discarded)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    chunk = await self.reader.read(65536)
                    if not chunk:
                        return True
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def connect_packet(client_id: str, *, keepalive: int = 60, password: str | None = None) -> bytes:
    from corem_ingress.adapters.mqtt import codec

    return codec.encode_connect(
        codec.Connect(
            4,
            client_id,
            True,
            keepalive,
            "device" if password is not None else None,
            password.encode() if password is not None else None,
        )
    )


async def wait_for(predicate: Any, *, timeout: float = 10, what: str = "condition") -> None:
    """Poll ``predicate()`` (bounded) until true."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


# -- paho-mqtt (threaded client; driven from a worker thread) ---------------------------------
_V5_TO_V311 = {0: 0, 132: 1, 133: 2, 136: 3, 134: 4, 135: 5}


def paho_connect(
    port: int,
    pki: Pki,
    *,
    cert: DeviceCert | None = None,
    client_id: str = "",
    clean_session: bool = True,
    password: str | None = None,
    timeout: float = 10,
    protocol: Any = None,
    reconnect: bool = True,
) -> tuple[int | None, Any]:
    """Connect with paho; returns (CONNACK code or None if the TLS handshake failed, client).

    ``protocol``: paho's MQTTv311 (the default) or MQTTv5 (then the code is the MQTT 5
    reason code). ``reconnect=False``: the client does not reconnect by itself."""
    import threading

    import paho.mqtt.client as paho

    protocol = paho.MQTTv311 if protocol is None else protocol
    done = threading.Event()
    result: dict[str, int] = {}
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session if protocol != paho.MQTTv5 else None,
        protocol=protocol,
    )
    if not reconnect:
        client.reconnect_delay_set(60, 60)  # the caller decides
    client.tls_set(
        ca_certs=str(pki.ca_file),
        certfile=str(cert.cert) if cert else None,
        keyfile=str(cert.key) if cert else None,
    )
    if password is not None:
        client.username_pw_set("device", password)

    def on_connect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        # paho 2 reports MQTT 3.1.1 CONNACK codes as MQTT 5 reason codes: map them back.
        value = reason.value if hasattr(reason, "value") else int(reason)
        result["rc"] = value if protocol == paho.MQTTv5 else _V5_TO_V311.get(value, value)
        done.set()

    client.on_connect = on_connect
    client.on_connect_fail = lambda *_a: done.set()
    client.on_disconnect = lambda *_a: done.set()
    try:
        client.connect("127.0.0.1", port, keepalive=30)
    except (ssl.SSLError, OSError):
        return None, client
    client.loop_start()
    done.wait(timeout)
    if "rc" not in result:
        client.loop_stop()
        return None, client
    return result["rc"], client
