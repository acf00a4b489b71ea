"""Operator requests routed through Redis to the node holding the device's DTLS session
(the second node a real ``python -m corem_ingress serve`` process), and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KEK_LINE
from tests.lwm2m.conftest import WAIT_S, provision

pytestmark = pytest.mark.integration


async def cli(redis_url: str, *args: str) -> tuple[int, Any, str]:
    """Run ``corem-ingress lwm2m ...``; -> (exit code, stdout JSON or None, stderr)."""
    env = {**os.environ, "COREM_REDIS_URL": redis_url, "COREM_PSK_KEK": KEK_LINE}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "corem_ingress",
        "lwm2m",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    text = out.decode()
    return proc.returncode, json.loads(text) if text.strip() else None, err.decode()


@contextlib.asynccontextmanager
async def serve_process(
    redis_url: str, certs: Any, tmp_path: Path, node_id: str
) -> AsyncIterator[int]:
    """A second node (CoAP + LwM2M only) as its own process; yields its CoAP port."""
    env = {
        **os.environ,
        "COREM_REDIS_URL": redis_url,
        "COREM_PSK_KEK": KEK_LINE,
        "COREM_NODE_ID": node_id,
        "COREM_STATE_DIR": str(tmp_path / node_id),
        "COREM_HTTP_ENABLED": "0",
        "COREM_MQTT_ENABLED": "0",
        "COREM_HEALTH_PORT": "0",
        "COREM_COAP_HOST": "127.0.0.1",
        "COREM_COAP_PORT": "0",
        "COREM_COAP_SERVER_CERT": str(certs.server_pem),
        "COREM_COAP_SERVER_KEY": str(certs.server_key),
        "COREM_COAP_CLIENT_CA_FILES": str(certs.ca_pem),
        "COREM_COAP_HANDSHAKE_RATE_PER_S": "0",
        "COREM_LWM2M_OBSERVE_PATHS": "",
        "COREM_LOGGING_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "corem_ingress",
        "serve",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    drain: asyncio.Task[None] | None = None
    try:
        port = None
        async with asyncio.timeout(WAIT_S * 2):
            while port is None:
                line = await proc.stderr.readline()
                assert line, "the node exited before listening"
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("event") == "coap.listening":
                        port = int(event["port"])

        async def discard(stream: asyncio.StreamReader) -> None:
            while await stream.readline():
                pass

        drain = asyncio.ensure_future(discard(proc.stderr))
        yield port
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if drain is not None:
            drain.cancel()


async def test_requests_are_routed_to_the_node_holding_the_session(
    lwm2m_node: Any, redis_url: str, tmp_path: Path
) -> None:
    a = await lwm2m_node(observe_paths=[])
    async with serve_process(redis_url, a.certs, tmp_path, "node-b") as port_b:
        p = await provision(a.registry, a.certs, "psk")
        dev = a.device(p, port=port_b)
        await dev.connect()
        reg = (await a.registration(p.device_id)).body
        assert reg["node_id"] == "node-b"
        # Through node A's admin API, answered by the device over node B's session.
        r = await a.op(p.device_id, "read", path="/3/0/1")
        assert r.status == 200 and r.body["records"][0]["value"] == "corem-sim-1"
        assert ("GET", "/3/0/1", None) in dev.requests
        # And through the CLI (no node of its own: Redis only).
        rc, out, err = await cli(
            redis_url, "read", "--tenant", "acme", "--device", p.device_id, "--path", "/3/0/0"
        )
        assert rc == 0, err
        assert out["code"] == "2.05" and out["records"][0]["value"] == "CORE-M"
        rc, out, err = await cli(
            redis_url,
            "write",
            "--tenant",
            "acme",
            "--device",
            p.device_id,
            "--path",
            "/1/0/2",
            "--values",
            '[{"path": "/1/0/2", "value": 5}]',
        )
        assert rc == 0 and out["code"] == "2.04", err
        assert {str(k): v for k, v in dev.client.values.items()}["/1/0/2"] == 5
        rc, out, err = await cli(
            redis_url, "execute", "--tenant", "acme", "--device", p.device_id, "--path", "/1/0/8"
        )
        assert rc == 0 and out["code"] == "2.04", err
        rc, out, err = await cli(
            redis_url, "discover", "--tenant", "acme", "--device", p.device_id, "--path", "/3/0"
        )
        assert rc == 0 and out["links"], err
        assert {x["target"]: x["name"] for x in out["links"]}["/3/0/9"] == "Battery Level"
        # Issue 15: two of the new operations through the CLI (at once: a CLI process
        # takes seconds to start under load; the options of every new subcommand are checked
        # in tests/unit/test_cli_parser.py), the others through node A's admin API; every
        # one is served over node B's session.
        dm = ("--tenant", "acme", "--device", p.device_id)
        values = [{"path": "/1/0/3", "value": 77}, {"path": "/3303/0/5750", "value": "attic"}]
        r = await a.op(p.device_id, "write-composite", values=values, accept=112)
        assert r.status == 200 and r.body["code"] == "2.04", r.body
        wa, rd = await asyncio.gather(
            cli(redis_url, "write-attributes", *dm, "--path", "/3303/0/5700", "--pmin", "5",
                "--pmax", "60", "--gt", "30.5", "--st", "0.5", "--epmin", "1", "--epmax", "30"),
            cli(redis_url, "read-composite", *dm, "--accept", "112", "--paths",
                "/1/0/3,/3303/0/5750"),
        )  # fmt: skip
        assert wa[0] == 0 and wa[1]["code"] == "2.04", wa[2]
        new = [{"path": "/3303/7/5700", "value": 19.5}, {"path": "/3303/7/5701", "value": "Cel"}]
        r = await a.op(p.device_id, "create", path="/3303", values=new)
        assert r.status == 200 and r.body["instances"] == ["/3303/7"], r.body
        assert rd[0] == 0, rd[2]
        assert {x["path"]: x["value"] for x in rd[1]["records"]} == {
            "/1/0/3": 77,
            "/3303/0/5750": "attic",
        }
        # 15.1: Discover shows the attributes (epmin/epmax too: Wakaama has none).
        r = await a.op(p.device_id, "discover", path="/3303/0")
        params = {x["target"]: x["params"] for x in r.body["links"]}["/3303/0/5700"]
        assert params == {"epmax": "30", "epmin": "1", "gt": "30.5", "pmax": "60", "pmin": "5",
                          "st": "0.5"}, r.body  # fmt: skip
        r = await a.op(p.device_id, "write-attributes", path="/3303/0/5700", clear=["gt", "st"])
        assert r.status == 200, r.body
        r = await a.op(p.device_id, "discover", path="/3303/0/5700")
        assert "gt" not in {x["target"]: x["params"] for x in r.body["links"]}["/3303/0/5700"]
        # 15.3: the created instance reads back; created again: the device's 4.00; deleted.
        r = await a.op(p.device_id, "read", path="/3303/7/5700")
        assert r.status == 200 and r.body["records"][0]["value"] == 19.5, r.body
        body = {"path": "/3303", "values": [{"path": "/3303/7/5700", "value": 1.0}]}
        assert (await a.op(p.device_id, "create", **body)).status == 400
        r = await a.op(p.device_id, "delete", path="/3303/7")
        assert r.status == 200 and r.body["code"] == "2.02", r.body
        assert (3303, 7) not in dev.client.instances
        assert (await a.op(p.device_id, "delete", path="/3303/7")).status == 404
        # 15.2: an Observe-Composite held by node B's session, cancelled from node A.
        paths = ["/3303/0/5700", "/3/0/9"]
        r = await a.op(p.device_id, "observe-composite", paths=paths)
        assert r.status == 200 and {x["path"] for x in r.body["records"]} == set(paths), r.body
        assert any(o.paths for o in dev.observed.values())
        r = await a.op(p.device_id, "cancel-observe-composite", paths=paths)
        assert r.status == 200 and r.body["code"] == "2.05", r.body
        assert not any(o.paths for o in dev.observed.values())
        rc, out, err = await cli(
            redis_url, "registration", "--tenant", "acme", "--device", p.device_id
        )
        assert rc == 0 and out["node_id"] == "node-b", err
        # Refusals: one line on stderr, exit 2.
        rc, out, err = await cli(
            redis_url, "read", "--tenant", "acme", "--device", p.device_id, "--path", "/3/0/99"
        )
        assert rc == 2 and out is None and err.count("\n") == 1 and "NOT_FOUND" in err
        rc, out, err = await cli(
            redis_url, "read", "--tenant", "acme", "--device", p.device_id, "--path", "nope"
        )
        assert rc == 2 and err.count("\n") == 1 and "INVALID_ARGUMENT" in err
        rc, out, err = await cli(
            redis_url, "read", "--tenant", "globex", "--device", p.device_id, "--path", "/3/0/0"
        )
        assert rc == 2 and "NOT_FOUND" in err
        rc, out, err = await cli(redis_url, "read", "--tenant", "acme", "--path", "/3/0/0")
        assert rc == 2 and "--device" in err
    # Node B is gone: nobody serves its stream, the caller times out (503).
    r = await a.op(p.device_id, "read", path="/3/0/0", timeout_s=1)
    assert r.status == 503
    # The device re-handshakes with node A and updates: the registration follows it there.
    assert dev.channel is not None
    dev.channel.close()
    dev.channel = None
    dev.target = a.device(p).target
    await dev.open_session()
    assert (await dev.update()).code.dotted == "2.04"
    assert (await a.registration(p.device_id)).body["node_id"] == a.node.config.node_id
    r = await a.op(p.device_id, "read", path="/3/0/0")
    assert r.status == 200 and r.body["records"][0]["value"] == "CORE-M"
