"""`corem-ingress serve` as a real process: embedded Redis, health endpoints, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from corem_ingress import compiled
from corem_ingress.embedded_redis import free_port, is_alive


def _get(url: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait_ready(port: int, proc: subprocess.Popen[str], timeout: float = 30) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            status, body = _get(f"http://127.0.0.1:{port}/readyz")
            if status == 200 and not body["degraded"]:
                return body
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("broker never became ready")


def _serve(env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    e = dict(os.environ)
    e.update(env)
    e.update(
        {
            "COREM_HEALTH_PORT": str(port),
            "COREM_HTTP_ENABLED": "false",
            "COREM_MQTT_ENABLED": "false",
            "COREM_COAP_ENABLED": "false",
            "COREM_STATE_DIR": str(tmp_path / "state"),
            "COREM_LOGGING_FORMAT": "json",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "corem_ingress", "serve"],
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, port


def test_serve_with_embedded_redis_health_and_sigterm(tmp_path: Path, kek_env: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COREM_REDIS_URL"}
    env["COREM_REDIS_URL"] = ""
    proc, port = _serve(env, tmp_path)
    try:
        body = _wait_ready(port, proc)
        assert body["checks"] == {"redis": True, "bus": True}
        assert _get(f"http://127.0.0.1:{port}/healthz") == (200, {"status": "ok"})
        url = (tmp_path / "state" / "redis.url").read_text().strip()
        assert url.startswith("redis://127.0.0.1:")
        # The CLI finds the embedded Redis through the state file.
        cli_env = {
            **os.environ,
            "COREM_STATE_DIR": str(tmp_path / "state"),
            "COREM_PSK_KEK": kek_env,
        }
        cli_env.pop("COREM_REDIS_URL", None)
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "corem_ingress",
                "devices",
                "provision",
                "--tenant",
                "t",
                "--hardware-id",
                "h",
                "--credential",
                "psk",
            ],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        logs = [
            json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")
        ]
        events = [entry["event"] for entry in logs]
        assert "redis.embedded_started" in events and "node.stopped" in events
        embedded = next(entry for entry in logs if entry["event"] == "redis.embedded_started")
        # The private redis-server is gone with the broker, and so is the state file.
        for _ in range(50):
            if not is_alive(embedded["pid"]):
                break
            time.sleep(0.1)
        assert not is_alive(embedded["pid"])
        assert not (tmp_path / "state" / "redis.url").exists()
        # No secret in the logs.
        assert json.loads(r.stdout)["psk"] not in "\n".join(json.dumps(x) for x in logs)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_uses_configured_redis(tmp_path: Path, redis_url: str, kek_env: str) -> None:
    proc, port = _serve({"COREM_REDIS_URL": redis_url}, tmp_path)
    try:
        _wait_ready(port, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "redis.embedded_started" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _readyz_when_checked(port: int, proc: subprocess.Popen[str]) -> tuple[int, dict]:  # type: ignore[type-arg]
    """/readyz once the node has checked its dependencies (the first check at start)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            status, body = _get(f"http://127.0.0.1:{port}/readyz")
            if "redis" in body.get("degraded_reasons", {}):
                return status, body
        except OSError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)


def test_readyz_reports_unreachable_redis_as_degraded_not_unready(
    tmp_path: Path, kek_env: str
) -> None:
    """A shared Redis down: every node would fail readiness together and the load balancer
    would leave devices with silence; the node stays ready and says it is degraded."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    proc, port = _serve({"COREM_REDIS_URL": dead, "COREM_REDIS_SOCKET_TIMEOUT_S": "0.3"}, tmp_path)
    try:
        status, body = _readyz_when_checked(port, proc)
        assert status == 200 and body["status"] == "ready" and body["degraded"] is True
        assert body["checks"] == {"redis": False, "bus": False}
        assert set(body["degraded_reasons"]) == {"redis", "bus"}
        assert "503" in body["degraded_reasons"]["redis"]  # says what devices get
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
        assert "corem_degraded 1.0" in text
        assert 'corem_dependency_up{dependency="redis"} 0.0' in text
        # The node labels its build like this test process's (COREM_PURE is inherited).
        assert f'corem_build_info{{modules="{compiled.build()}",version="0.1.0"}} 1.0' in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_readyz_can_require_redis(tmp_path: Path, kek_env: str) -> None:
    """health.readiness_requires_redis: the former behaviour, for who wants it."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = {
        "COREM_REDIS_URL": dead,
        "COREM_REDIS_SOCKET_TIMEOUT_S": "0.3",
        "COREM_HEALTH_READINESS_REQUIRES_REDIS": "true",
    }
    proc, port = _serve(env, tmp_path)
    try:
        status, body = _readyz_when_checked(port, proc)
        assert status == 503 and body["checks"] == {"redis": False, "bus": False}
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("http:\n  port: eighty\n")
    r = subprocess.run(
        [sys.executable, "-m", "corem_ingress", "serve", "--config", str(f)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert (
        r.stderr.strip()
        == "corem-ingress: error: config: http.port: expected int (from " + str(f) + ")"
    )


def test_serve_registers_the_configured_tenant_cas(tmp_path: Path, kek_env: str) -> None:
    """The quick start: the embedded Redis starts empty, and ``trust.bootstrap_cas``
    (``configs/dev.yaml``: the dev CA for ``acme``) makes the dev device certificates
    provisionable with the README's commands."""
    from corem_ingress.devcerts import write_dev_certs

    write_dev_certs(tmp_path / "certs-dev", devices=1)
    env = {k: v for k, v in os.environ.items() if k != "COREM_REDIS_URL"}
    env.update(
        {
            "COREM_REDIS_URL": "",
            "COREM_TRUST_BOOTSTRAP_CAS": f"acme:{tmp_path / 'certs-dev' / 'ca.pem'}",
        }
    )
    proc, port = _serve(env, tmp_path)
    try:
        _wait_ready(port, proc)
        cli_env = {**env, "COREM_STATE_DIR": str(tmp_path / "state"), "COREM_PSK_KEK": kek_env}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "corem_ingress", *args],
                env=cli_env,
                capture_output=True,
                text=True,
                timeout=30,
            )

        device_pem = str(tmp_path / "certs-dev" / "devices" / "device-1.pem")
        provision = ["devices", "provision", "--tenant", "acme", "--hardware-id", "SN-3"]
        r = cli(*provision, "--credential", "x509", "--cert", device_pem)
        assert r.returncode == 0, r.stderr
        listed = json.loads(cli("cas", "list", "--tenant", "acme").stdout)["cas"]
        assert len(listed) == 1 and "DEV ONLY" in listed[0]["subject"]
        # Another tenant does not trust the dev CA.
        r = cli("devices", "provision", "--tenant", "globex", "--hardware-id", "SN-3",
                "--credential", "x509", "--cert", device_pem)  # fmt: skip
        assert r.returncode == 2 and "FAILED_PRECONDITION" in r.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert '"trust.bootstrap_ca"' in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_missing_bootstrap_ca_file_is_one_line_exit_2(tmp_path: Path, redis_url: str) -> None:
    env = {
        **os.environ,
        "COREM_REDIS_URL": redis_url,
        "COREM_TRUST_BOOTSTRAP_CAS": f"acme:{tmp_path / 'nope.pem'}",
        "COREM_HEALTH_PORT": "0",
        "COREM_HTTP_ENABLED": "false",
        "COREM_MQTT_ENABLED": "false",
        "COREM_COAP_ENABLED": "false",
        "COREM_STATE_DIR": str(tmp_path / "state"),
    }
    r = subprocess.run(
        [sys.executable, "-m", "corem_ingress", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert (
        r.stderr.strip()
        .splitlines()[-1]
        .startswith("corem-ingress: error: config: trust.bootstrap_cas: cannot read")
    )
