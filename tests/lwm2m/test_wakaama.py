"""Eclipse Wakaama's lwm2mclient (tinydtls, PSK) as the device against a real node: the
defects of issue 11 found with it (points 8-12). One broker for the module; each Wakaama
process is bounded in time and killed by its PID.

Wakaama caps PSKs at 16 bytes (``credentials.psk_min_bytes: 16`` here), announces
``ct=110`` (SenML JSON) and has no TLV; ``-S 64`` makes it answer in 64-byte blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from corem_ingress.adapters import coap, http
from corem_ingress.adapters.http.operators import generate_token, hash_token
from corem_ingress.app import Node, redis_client
from corem_ingress.core.identity import CredentialKind
from corem_ingress.lwm2m import operations as ops
from corem_ingress.store.keys import KeySchema
from tests.coap.conftest import CertSet, coap_section
from tests.conftest import KEK_LINE, make_config
from tests.http.conftest import Api
from tests.lwm2m.conftest import until
from tests.peers import peer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

#: The longest a Wakaama process of these tests may live.
WAKAAMA_MAX_S = 30.0
IDLE_TIMEOUT_S = 3.0
KEYS = KeySchema("corem")
_n = itertools.count(1)


@dataclass
class Broker:
    node: Node
    port: int
    api: Api
    redis: Any

    @property
    def lwm2m(self) -> Any:
        return next(x for x in self.node.listeners if x.name == "coap").lwm2m

    @property
    def dtls_config(self) -> Any:
        return next(x for x in self.node.listeners if x.name == "coap").dtls_server.config

    async def registration(self, device_id: str) -> Any:
        return await self.api.request("GET", f"/api/v1/devices/{device_id}/lwm2m", tenant="acme")

    async def op(self, device_id: str, operation: str, **body: Any) -> Any:
        return await self.api.request(
            "POST", f"/api/v1/devices/{device_id}/lwm2m/{operation}", tenant="acme", json=body
        )

    async def uplinks(self, device_id: str, path: str, *, at_least: int) -> list[dict[str, Any]]:
        """The device's notification payloads of ``path``, waiting (bounded) for ``at_least``."""
        out: list[dict[str, Any]] = []

        async def enough() -> bool:
            out.clear()
            for _id, fields in await self.redis.xrange(KEYS.uplink_stream("acme")):
                payload = json.loads(fields["payload"])
                if fields["device_id"] == device_id and payload.get("path") == path:
                    out.append(payload)
            return len(out) >= at_least

        await until(enough)
        return list(out)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wakaama")


@contextlib.asynccontextmanager
async def start_broker(redis_server: Any, tmp: Path, **lwm2m: Any) -> AsyncIterator[Broker]:
    """One node (CoAP/DTLS + HTTP admin) for Wakaama; ``lwm2m`` overrides its LwM2M section."""
    from corem_ingress import devcerts

    ca = devcerts.make_ca("corem test CA")
    ca.write(tmp / "ca.pem", tmp / "ca.key")
    devcerts.issue(ca, "localhost", server=True).write(tmp / "server.pem", tmp / "server.key")
    certs = CertSet(tmp, ca, tmp / "ca.pem", tmp / "server.pem", tmp / "server.key")
    token = generate_token()
    tokens_file = tmp / "admin-tokens"
    tokens_file.write_text(f"acme:{hash_token(token)}:ops-acme\n")
    saved = {k: os.environ.get(k) for k in ("COREM_PSK_KEK", "COREM_HTTP_ADMIN_TOKENS")}
    os.environ["COREM_PSK_KEK"] = KEK_LINE
    os.environ.pop("COREM_HTTP_ADMIN_TOKENS", None)
    redis = redis_client(redis_server.url)
    await redis.flushall()
    cfg = make_config(
        redis_server.url,
        coap=coap_section(certs, idle_timeout_s=IDLE_TIMEOUT_S),
        http={"admin_tokens_file": str(tokens_file)},
        limits={"auth_fail_max": 0},
        credentials={"psk_min_bytes": 16},
        lwm2m={
            "observe_paths": ["/3/0"],
            "expiry_grace_s": 1,
            "request_timeout_s": 5.0,
            **lwm2m,
        },
    )
    node = Node(cfg, listener_factories=[coap.build, http.build])
    await node.start()
    await node.bus.subscribed.wait()
    coap_port = next(x for x in node.listeners if x.name == "coap").port
    http_port = next(x for x in node.listeners if x.name == "http").port
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{http_port}", {"acme": token})
            yield Broker(node, coap_port, api, redis)
    finally:
        await node.stop()
        await redis.aclose()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def broker(redis_server: Any, module_tmp: Path) -> AsyncIterator[Broker]:
    async with start_broker(redis_server, module_tmp) as b:
        yield b


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Device:
    device_id: str
    endpoint: str
    identity: str
    psk: bytes


async def provision(b: Broker) -> Device:
    n = next(_n)
    endpoint, identity = f"wk-{os.getpid()}-{n}", f"acme:wk-{os.getpid()}-{n}"
    psk = os.urandom(16)
    res = await b.node.services.registry.provision(
        "acme", endpoint, CredentialKind.PSK, actor="test", psk_identity=identity, psk_bytes=psk
    )
    return Device(res.device.device_id, endpoint, identity, psk)


class Wakaama:
    """One ``lwm2mclient_tinydtls`` process (stdin held open: it quits on EOF)."""

    def __init__(
        self,
        b: Broker,
        dev: Device,
        *,
        lifetime_s: int,
        block: int | None = None,
        max_s: float = WAKAAMA_MAX_S,
    ):
        args = [
            peer("lwm2mclient_tinydtls"), "-4", "-h", "127.0.0.1", "-p", str(b.port),
            "-l", str(_free_udp_port()), "-n", dev.endpoint, "-i", dev.identity,
            "-s", dev.psk.hex(), "-t", str(lifetime_s),
        ]  # fmt: skip
        if block is not None:
            args += ["-S", str(block)]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # Bounded whatever happens to the test.
        self._watchdog = asyncio.get_running_loop().call_later(max_s, self.stop)

    def pause(self) -> None:
        """SIGSTOP: the device goes silent (no Update, no close_notify)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def stop(self) -> None:
        self._watchdog.cancel()
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL by PID: also ends a stopped process
        self.proc.wait(timeout=10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()


async def _registered(b: Broker, dev: Device) -> dict[str, Any]:
    async def ok() -> bool:
        return bool((await b.registration(dev.device_id)).status == 200)

    await until(ok)
    return dict((await b.registration(dev.device_id)).body)


def _values(records: list[dict[str, Any]]) -> dict[str, tuple[str, Any]]:
    return {r["path"]: (r["type"], r["value"]) for r in records}


async def test_block2_answers_and_notifications_formats_and_types(broker: Broker) -> None:
    """Points 9, 10 and 12 with 64-byte blocks: the automatic Observe's first value and
    later notifications, and a Read of /3/0, all put together from their blocks; Read with
    no Accept asks for the announced SenML JSON (Wakaama answers 5.00 without one); /5/0/3 is
    an integer in text and in SenML alike."""
    dev = await provision(broker)
    wk = Wakaama(broker, dev, lifetime_s=30, block=64)
    try:
        reg = await _registered(broker, dev)
        assert reg["objects"]["content_formats"] == [110]
        (first,) = await broker.uplinks(dev.device_id, "/3/0", at_least=1)
        values = _values(first["records"])
        assert values["/3/0/0"] == ("string", "Open Mobile Alliance")
        assert values["/3/0/16"] == ("string", "U") and len(values) >= 15

        r = await broker.op(dev.device_id, "read", path="/3/0")  # no Accept from the operator
        assert r.status == 200, r.body
        read = _values(r.body["records"])
        assert {p: t for p, (t, _v) in read.items()} == {p: t for p, (t, _v) in values.items()}
        assert read["/3/0/0"] == ("string", "Open Mobile Alliance")
        states = []
        for accept in (None, ops.CF_TEXT, ops.CF_SENML_JSON):
            body: dict[str, Any] = {"path": "/5/0/3"}
            if accept is not None:
                body["accept"] = accept
            r = await broker.op(dev.device_id, "read", **body)
            assert r.status == 200, r.body
            states.append(_values(r.body["records"])["/5/0/3"])
        assert states[0][0] == "integer" and states == [states[0]] * 3

        # Notifications of /3/0 every second (pmax 1), each one spanning several blocks.
        stored = await broker.lwm2m.store.get_by_device(dev.device_id)
        attrs = ops.write_attributes("/3/0", pmax=1, root=stored.objects.root)
        assert (await broker.lwm2m.call(stored, attrs, timeout_s=5)).code == "2.04"
        notes = await broker.uplinks(dev.device_id, "/3/0", at_least=3)
        assert all(_values(n["records"])["/3/0/0"][1] == "Open Mobile Alliance" for n in notes)
        assert all(len(n["records"]) == len(first["records"]) for n in notes)
    finally:
        wk.stop()


async def test_session_outlives_the_idle_timeout_while_registered(broker: Broker) -> None:
    """Point 11: lifetime 30 s, DTLS idle timeout 3 s, 4.5 s of silence: the device is still
    registered, reachable and answers."""
    dev = await provision(broker)
    wk = Wakaama(broker, dev, lifetime_s=30)
    try:
        await _registered(broker, dev)
        await broker.uplinks(dev.device_id, "/3/0", at_least=1)
        await asyncio.sleep(IDLE_TIMEOUT_S * 1.5)  # Wakaama's first Update is due at 15 s
        reg = await broker.registration(dev.device_id)
        assert reg.status == 200 and reg.body["reachable"] is True
        r = await broker.op(dev.device_id, "read", path="/3/0/0")
        assert r.status == 200 and r.body["records"][0]["value"] == "Open Mobile Alliance"
    finally:
        wk.stop()


async def test_a_device_back_after_expiry_is_observed_again(broker: Broker) -> None:
    """Point 8: the registration expired (gone from Redis: lifetime + grace) while the old
    DTLS session was still open; the device registers again from a new address and its
    configured path is observed again (its first value is stored)."""
    config = broker.dtls_config
    saved = config.idle_timeout
    config.idle_timeout = 60.0  # the old session outlives the registration (as in the report)
    dev = await provision(broker)
    old = Wakaama(broker, dev, lifetime_s=3)
    new: Wakaama | None = None
    try:
        first = await _registered(broker, dev)
        await broker.uplinks(dev.device_id, "/3/0", at_least=1)
        old.pause()  # silent from now on: no Update, no close_notify

        async def gone_from_redis() -> bool:
            return not await broker.redis.exists(KEYS.lwm2m_device(dev.device_id))

        await until(gone_from_redis)
        new = Wakaama(broker, dev, lifetime_s=30)
        second = await _registered(broker, dev)
        assert second["registration_id"] != first["registration_id"]
        notes = await broker.uplinks(dev.device_id, "/3/0", at_least=2)
        assert notes[-1]["registration_id"] == second["registration_id"]
    finally:
        config.idle_timeout = saved
        old.stop()
        if new is not None:
            new.stop()


async def test_firmware_push_with_block1(broker: Broker) -> None:
    """Issue 15.5 with Wakaama: its object 5 is a stub (State starts at 1, a Package write is
    accepted and dropped, nothing is ever downloaded or applied), so what it proves is the
    wire: the server's block-wise Write of /5/0/0 (Block1, 512-byte blocks, 2.31 Continue
    each, 2.04 for the last) is accepted by a real client, and /5/0/3 is observed."""
    dev = await provision(broker)
    wk = Wakaama(broker, dev, lifetime_s=30)
    agent = broker.lwm2m.firmware
    before = dict(agent.stats)
    try:
        await _registered(broker, dev)
        image = os.urandom(3000)
        up = await broker.api.request(
            "POST",
            "/api/v1/lwm2m/firmware?name=wk&version=1.1",
            tenant="acme",
            data=image,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert up.status == 201, up.body
        r = await broker.api.request(
            "POST",
            f"/api/v1/lwm2m/firmware/{up.body['image_id']}/updates",
            tenant="acme",
            json={"device_ids": [dev.device_id], "method": "push"},
        )
        assert r.status == 201, r.body
        campaign = r.body["campaign_id"]
        await until(lambda: agent.stats["pushes_completed"] == before["pushes_completed"] + 1)
        assert agent.stats["blocks_pushed"] - before["blocks_pushed"] == 6  # 3000 / 512
        view = await broker.api.request("GET", f"/api/v1/lwm2m/campaigns/{campaign}", tenant="acme")
        (job,) = view.body["jobs"]
        # Its State (observed) says 1, Downloading, and stays there: no error, no Execute.
        assert (job["status"], job["device_state"], job["error"]) == ("downloading", 1, None)
    finally:
        wk.stop()
