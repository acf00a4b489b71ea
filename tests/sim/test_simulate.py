"""`corem-ingress simulate` against a real broker node, for every transport it drives.

The simulator runs as a real process (as an operator runs it); the broker is an
in-process node on free ports with a real redis-server. Its figures come from what
the devices observed; here they are checked against what the tenant's stream holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from corem_ingress import devcerts
from corem_ingress.adapters import coap, http, mqtt
from corem_ingress.core.downlink import Downlink
from corem_ingress.core.identity import CredentialKind
from corem_ingress.sim.coap_devices import CoapOpenSslPskDevice
from corem_ingress.sim.devices import Target

SIM_TENANT = "simtest"


def node_certs(tmp_path: Path) -> Path:
    """A CA and the broker's server certificate, under tmp_path/certs."""
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = devcerts.make_ca()
    ca.write(certs / "ca.pem", certs / "ca.key")
    devcerts.issue(ca, "localhost", server=True).write(certs / "server.pem", certs / "server.key")
    return certs


@pytest.fixture
async def broker(start_node: Any, tmp_path: Path) -> dict[str, Any]:
    certs = node_certs(tmp_path)
    tls = {
        "server_cert": str(certs / "server.pem"),
        "server_key": str(certs / "server.key"),
        "client_ca_files": [str(certs / "ca.pem")],
    }
    node = await start_node(
        [http.build, mqtt.build, coap.build],
        mqtt={**tls, "client_auth": "optional"},
        coap=tls,
        credentials={"psk_min_bytes": 16},  # stock tinydtls (DTLSSocket) caps PSKs at 16 bytes
    )
    ports = {listener.name: listener.port for listener in node.listeners}
    return {"node": node, "ports": ports, "certs": certs, "state": tmp_path / "state"}


async def simulate(
    broker: dict[str, Any], redis_url: str, *args: str, psk_min_bytes: int = 16
) -> tuple[int, str, str]:
    ports = broker["ports"]
    env = dict(os.environ)
    env.update(
        {
            "COREM_REDIS_URL": redis_url,
            "COREM_STATE_DIR": str(broker["state"]),
            "COREM_HTTP_PORT": str(ports.get("http", 0)),
            "COREM_MQTT_PORT": str(ports.get("mqtt", 0)),
            "COREM_COAP_PORT": str(ports["coap"]),
            "COREM_CREDENTIALS_PSK_MIN_BYTES": str(psk_min_bytes),
        }
    )
    certs = broker["certs"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "corem_ingress",
        "simulate",
        "--tenant",
        SIM_TENANT,
        "--server-ca",
        str(certs / "ca.pem"),
        "--ca-cert",
        str(certs / "ca.pem"),
        "--ca-key",
        str(certs / "ca.key"),
        "--quiet",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def stored_per_device(redis: aioredis.Redis) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _id, fields in await redis.xrange(f"corem:uplink:{{{SIM_TENANT}}}"):
        counts[fields["device_id"]] = counts.get(fields["device_id"], 0) + 1
    return counts


@pytest.mark.parametrize(
    ("transport", "credential"),
    [
        ("http", "api_key"),
        ("mqtt", "x509"),
        ("mqtt", "api_key"),
        ("coap", "psk"),
        ("coap", "x509"),
        ("lwm2m", "psk"),
        ("lwm2m", "x509"),
    ],
)
async def test_fleet_run_with_revocations(
    broker: dict[str, Any],
    redis: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
    transport: str,
    credential: str,
) -> None:
    report = tmp_path / "report.json"
    code, out, err = await simulate(
        broker,
        redis_url,
        "--transport",
        transport,
        "--credential",
        credential,
        "--devices",
        "4",
        "--ramp",
        "20",
        "--rate",
        "4",
        "--duration",
        "3",
        "--provision",
        "--revoke-fraction",
        "0.5",
        "--report",
        str(report),
    )
    assert code == 0, err
    summary = json.loads(report.read_text())
    assert json.loads(out.strip().splitlines()[-1]) == summary  # table, then the same JSON
    table = dict(line.split(None, 1) for line in out.strip().splitlines()[:-1] if " " in line)
    assert table["messages_delivered"].strip() == str(summary["messages_delivered"])
    assert summary["devices_connected"] == 4
    assert summary["errors"] == {}
    assert summary["messages_delivered"] > 0
    # Every message a device saw acknowledged is in the tenant's stream.
    stored = await stored_per_device(redis)
    assert sum(stored.values()) >= summary["messages_delivered"]
    assert all(v > 0 for v in stored.values()) and len(stored) == 4
    # Two of four devices lost their credential mid-run and saw their session end.
    assert summary["revoked"] == 2
    assert summary["revoked_still_connected"] == 0
    assert summary["revoke_to_disconnect_ms"]["p99"] is not None


async def test_rerun_reuses_devices_and_replaces_revoked_credentials(
    broker: dict[str, Any], redis: aioredis.Redis, redis_url: str
) -> None:
    args = [
        "--transport",
        "http",
        "--devices",
        "3",
        "--ramp",
        "50",
        "--rate",
        "2",
        "--duration",
        "1.5",
    ]
    code, _, err = await simulate(
        broker, redis_url, *args, "--provision", "--revoke-fraction", "0.34"
    )
    assert code == 0, err
    devices_before = await redis.zrange(f"{{corem}}:tenant:{SIM_TENANT}:devices", 0, -1)
    assert len(devices_before) == 3
    # Without --provision the saved credentials are used as they are: the revoked one fails.
    code, out, err = await simulate(broker, redis_url, *args)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["devices_connected"] == 2
    assert summary["errors"] == {"connect:unauthenticated": 1}
    # --provision again: the same devices, the revoked one gets a fresh key.
    code, out, err = await simulate(broker, redis_url, *args, "--provision")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["devices_connected"] == 3
    assert await redis.zrange(f"{{corem}}:tenant:{SIM_TENANT}:devices", 0, -1) == devices_before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--transport", "http", "--devices", "0", "--duration", "1"], "--devices"),
        (
            ["--transport", "http", "--devices", "1", "--duration", "1", "--host", "10.1.2.3"],
            "loopback",
        ),
        (
            ["--transport", "http", "--devices", "1", "--duration", "1", "--revoke-fraction", "2"],
            "revoke",
        ),
        (
            ["--transport", "http", "--devices", "1", "--duration", "1", "--credential", "psk"],
            "no http device",
        ),
        (["--transport", "http", "--devices", "5", "--duration", "1"], "--provision"),
    ],
)
async def test_bad_arguments(
    broker: dict[str, Any], redis: aioredis.Redis, redis_url: str, args: list[str], needle: str
) -> None:
    code, out, err = await simulate(broker, redis_url, *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err


async def test_openssl_psk_device_observes_downlinks_and_sees_close_notify(
    broker: dict[str, Any], registry: Any
) -> None:
    """The OpenSSL device side (no tinydtls 16-byte cap): a 32-byte PSK, an uplink, a
    downlink on its Observe of /down, then revocation ends the session by close_notify."""
    psk = os.urandom(32)
    res = await registry.provision(
        SIM_TENANT,
        "ossl-1",
        CredentialKind.PSK,
        actor="test",
        psk_identity=f"{SIM_TENANT}:ossl-1",
        psk_bytes=psk,
    )
    target = Target("127.0.0.1", broker["ports"]["coap"], str(broker["certs"] / "ca.pem"))
    device = CoapOpenSslPskDevice("ossl-1", target, f"{SIM_TENANT}:ossl-1", psk)
    await device.connect()
    try:
        await device.send(1)
        await broker["node"].services.downlink_publisher.publish(
            Downlink.new(SIM_TENANT, res.device.device_id, "ping", "hello", qos=0, now=0.0)
        )
        for _ in range(250):  # bounded: 5 s
            if device.downlinks:
                break
            await asyncio.sleep(0.02)
        assert device.downlinks == [b"hello"]
        await registry.revoke_psk(SIM_TENANT, res.device.device_id, actor="test")
        await asyncio.wait_for(device.closed.wait(), 10)
        assert device.closed_at is not None
        assert device._dtls is not None and device._dtls.client.closed  # close_notify
    finally:
        await device.close()


# -- issue 11.13 / 20.2: the default config, failures reported, runs that cannot connect -------
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def default_broker(start_node: Any, tmp_path: Path) -> dict[str, Any]:
    """A CoAP node with the default credential settings (32-byte PSKs)."""
    certs = node_certs(tmp_path)
    node = await start_node(
        [coap.build],
        coap={
            "server_cert": str(certs / "server.pem"),
            "server_key": str(certs / "server.key"),
            "client_ca_files": [str(certs / "ca.pem")],
        },
    )
    ports = {listener.name: listener.port for listener in node.listeners}
    return {"node": node, "ports": ports, "certs": certs, "state": tmp_path / "state"}


async def test_coap_psk_on_the_default_config_connects(
    default_broker: dict[str, Any], redis: aioredis.Redis, redis_url: str
) -> None:
    """The README's command on configs/dev.yaml (32-byte PSKs, which tinydtls cannot hold):
    the simulator runs the OpenSSL PSK device and every device connects and delivers."""
    code, out, err = await simulate(
        default_broker,
        redis_url,
        "--config",
        str(REPO / "configs" / "dev.yaml"),
        "--transport",
        "coap",
        "--devices",
        "10",
        "--duration",
        "5",
        "--provision",
        psk_min_bytes=32,
    )
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["devices_connected"] == 10 and summary["errors"] == {}, summary
    assert summary["device_stack"].startswith("openssl"), summary
    assert summary["messages_delivered"] > 0
    assert len(await stored_per_device(redis)) == 10


async def test_a_run_whose_devices_are_refused_stops_early_and_says_why(
    default_broker: dict[str, Any], registry: Any, redis: aioredis.Redis, redis_url: str
) -> None:
    args = ["--transport", "coap", "--devices", "6", "--ramp", "20", "--duration", "30"]
    code, _, err = await simulate(default_broker, redis_url, *args, "--provision", psk_min_bytes=32)
    assert code == 0, err
    for device_id in await redis.zrange(f"{{corem}}:tenant:{SIM_TENANT}:devices", 0, -1):
        await registry.revoke_psk(SIM_TENANT, device_id, actor="test")
    # Without --provision the saved (now revoked) PSKs are used: every handshake is refused.
    code, out, err = await simulate(default_broker, redis_url, *args, psk_min_bytes=32)
    assert code == 1, (out, err)
    (line,) = err.strip().splitlines()
    assert "no device could connect" in line and "unknown psk identity" in line, line
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["devices_connected"] == 0
    assert summary["elapsed_s"] < 15  # not the 30 s asked for
    assert summary["errors"] == {"connect:refused (tlsv1 alert unknown psk identity)": 3}
    assert "stopped early" in summary["stopped_early"]


async def test_a_run_with_no_broker_stops_early_and_says_why(
    default_broker: dict[str, Any], redis_url: str
) -> None:
    from corem_ingress.embedded_redis import free_port

    args = ["--transport", "coap", "--devices", "5", "--ramp", "50", "--duration", "30"]
    code, out, err = await simulate(
        default_broker,
        redis_url,
        *args,
        "--provision",
        "--port",
        str(free_port()),
        psk_min_bytes=32,
    )
    assert code == 1, (out, err)
    assert "no device could connect" in err
    summary = json.loads(out.strip().splitlines()[-1])
    (error,) = summary["errors"]
    assert error.startswith("connect:io (ConnectionRefusedError"), summary["errors"]


# -- issue 14: devices with a DTLS Connection ID whose NAT rebinds ------------------------------
def _dtls_server(broker: dict[str, Any]) -> Any:
    (listener,) = [x for x in broker["node"].listeners if x.name == "coap"]
    return listener.dtls_server


@pytest.mark.parametrize("cid", [True, False], ids=["cid", "no_cid"])
async def test_rebinding_devices_with_and_without_cid(
    broker: dict[str, Any], redis: aioredis.Redis, redis_url: str, tmp_path: Path, cid: bool
) -> None:
    """``--rebind-every``: each device's source port changes during the run. With ``--cid``
    its one session follows it (the server moves it, no new handshake); without, each
    rebinding costs a new handshake. Every uplink is acknowledged either way."""
    server = _dtls_server(broker)
    before = server.stats["handshakes_completed"]
    moved_before = server.stats["cid_address_changes"]
    report = tmp_path / "report.json"
    args = ["--transport", "coap", "--credential", "psk", "--devices", "3", "--ramp", "20"]
    args += ["--rate", "4", "--duration", "3", "--provision", "--rebind-every", "0.7"]
    args += ["--report", str(report)] + (["--cid", "4"] if cid else [])
    code, _out, err = await simulate(broker, redis_url, *args)
    assert code == 0, err
    summary = json.loads(report.read_text())
    assert summary["errors"] == {}, summary
    assert summary["messages_delivered"] == summary["messages_attempted"] > 0
    dtls = summary["dtls"]
    assert dtls["rebindings"] >= 3, dtls
    handshakes = server.stats["handshakes_completed"] - before
    if cid:
        assert dtls["cid_sessions"] == 3 and dtls["handshakes"] == 3 == handshakes
        # Each rebinding moved a session on the server (at the next uplink).
        assert server.stats["cid_address_changes"] - moved_before == dtls["rebindings"]
    else:
        assert dtls["cid_sessions"] == 0
        assert dtls["handshakes"] == 3 + dtls["rebindings"] == handshakes
    stored = await stored_per_device(redis)
    assert sum(stored.values()) >= summary["messages_delivered"]


async def test_cid_options_apply_to_coap_only(broker: dict[str, Any], redis_url: str) -> None:
    args = ["--transport", "mqtt", "--devices", "1", "--duration", "1", "--cid", "4"]
    code, out, err = await simulate(broker, redis_url, *args)
    assert code == 2 and out == "" and "--transport coap only" in err
