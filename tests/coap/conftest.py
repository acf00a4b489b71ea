"""CoAP/DTLS test fixtures: certificates made in tmp_path, a node with the CoAP listener,
devices provisioned in the real Redis, and runners for libcoap's real clients."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from corem_ingress import devcerts
from corem_ingress.adapters import coap
from corem_ingress.adapters.coap.listener import CoapListener
from corem_ingress.core.identity import CredentialKind
from corem_ingress.store.keys import KeySchema
from corem_ingress.store.registry import Registry
from tests.pki import admission

LOOPBACK = "127.0.0.1"
#: Every client call is bounded; tests never wait on time otherwise.
CLIENT_TIMEOUT = 30.0


@dataclass
class CertSet:
    dir: Path
    ca: devcerts.Issued
    ca_pem: Path
    server_pem: Path
    server_key: Path

    def device(
        self,
        name: str,
        *,
        ca: devcerts.Issued | str | None = "default",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> tuple[devcerts.Issued, Path, Path]:
        issuer = self.ca if ca == "default" else ca
        assert not isinstance(issuer, str)
        issued = devcerts.issue(issuer, name, not_before=not_before, not_after=not_after)
        cert, key = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        issued.write(cert, key)
        return issued, cert, key


@pytest.fixture
def certs(tmp_path: Path) -> CertSet:
    ca = devcerts.make_ca("corem test CA")
    ca_pem = tmp_path / "ca.pem"
    ca.write(ca_pem, tmp_path / "ca.key")
    server = devcerts.issue(ca, "localhost", server=True)
    server.write(tmp_path / "server.pem", tmp_path / "server.key")
    return CertSet(tmp_path, ca, ca_pem, tmp_path / "server.pem", tmp_path / "server.key")


def coap_section(certs: CertSet, **extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "host": LOOPBACK,
        "server_cert": str(certs.server_pem),
        "server_key": str(certs.server_key),
        "client_ca_files": [str(certs.ca_pem)],
        # Tests open many handshakes from 127.0.0.1; the limiter has its own test.
        "handshake_rate_per_s": 0.0,
        "ack_timeout_s": 0.5,
    }
    section.update(extra)
    return section


@pytest.fixture
def coap_node(start_node: Any, certs: CertSet) -> Callable[..., Any]:
    async def start(clock: Any = None, **extra: Any) -> Any:
        return await start_node([coap.build], clock=clock, coap=coap_section(certs, **extra))

    return start


def coap_port(node: Any) -> int:
    (listener,) = node.listeners
    return int(listener.port)


def coap_listener(node: Any) -> CoapListener:
    (listener,) = node.listeners
    assert isinstance(listener, CoapListener)
    return listener


_counter = iter(range(1, 1_000_000))


async def provision_psk(
    registry: Registry,
    tenant: str = "acme",
    *,
    identity: str | None = None,
    key_bytes: int = 40,
) -> tuple[str, str, bytes]:
    """-> (device_id, psk identity, psk). The key is printable (libcoap's -k takes text),
    ``key_bytes`` long (mbedTLS takes at most 32)."""
    n = next(_counter)
    ident = identity or f"{tenant}:dev-{n}-{os.getpid()}"
    key = secrets.token_urlsafe(30).encode()[:key_bytes]  # random printable bytes
    res = await registry.provision(
        tenant, f"hw-psk-{n}", CredentialKind.PSK, actor="test", psk_identity=ident, psk_bytes=key
    )
    assert res.psk is not None
    return res.device.device_id, res.psk.psk_identity, res.psk.psk


async def provision_cert(
    registry: Registry,
    issued: devcerts.Issued,
    tenant: str = "acme",
    *,
    ca: devcerts.Issued | None,
) -> str:
    """Register ``issued`` for a new device: its CA becomes the tenant's trust anchor, or,
    self-signed (``ca`` None), it is registered with proof of possession."""
    n = next(_counter)
    proof = await admission(registry, tenant, issued, ca)
    res = await registry.provision(
        tenant,
        f"hw-x509-{n}",
        CredentialKind.X509,
        actor="test",
        cert_pem=issued.cert_pem,
        proof_of_possession=proof,
    )
    return res.device.device_id


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (Debian libcoap3-bin)")
    return path


async def run_client(
    args: list[str], *, binary: str = "coap-client-openssl", timeout: float = CLIENT_TIMEOUT
) -> Result:
    proc = await asyncio.create_subprocess_exec(
        _binary(binary),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    return Result(
        proc.returncode if proc.returncode is not None else -1,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )


def psk_args(identity: str, key: bytes) -> list[str]:
    return ["-u", identity, "-k", key.decode()]


def cert_args(cert: Path, key: Path, ca: Path) -> list[str]:
    return ["-c", str(cert), "-j", str(key), "-R", str(ca)]


def url(port: int, path: str) -> str:
    return f"coaps://{LOOPBACK}:{port}/{path}"


async def read_uplinks(redis: Any, tenant: str) -> list[dict[str, str]]:
    entries = await redis.xrange(KeySchema("corem").uplink_stream(tenant))
    return [fields for _id, fields in entries]
