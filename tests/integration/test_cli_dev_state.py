"""The CLI next to a dev broker (issue 20): it finds the broker's embedded Redis, its PSK
KEK and its config file through the state dir, says which KEK file it used, and a production
setup (Redis configured) still needs the KEK configured explicitly. Plus ``keys list``.

A real ``corem-ingress serve --config dev.yaml`` on the embedded Redis, started with
``COREM_PSK_KEK_FILE`` as ``make run`` does; the CLI runs in a second process with no KEK and
no config in its environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from corem_ingress.adapters.http.operators import generate_token, hash_token
from corem_ingress.core.psk import generate_kek_line
from corem_ingress.embedded_redis import free_port

TOKEN = generate_token()
#: The dev broker's credential policy, unlike the defaults (1 day, at most 7 days).
OVERLAP_S, OVERLAP_MAX_S = 600, 1200

pytestmark = pytest.mark.integration


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREM_")}
    env.update(extra)
    return env


def cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corem_ingress", *args],
        cwd=cwd,
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def http_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def dev_broker(tmp_path_factory: pytest.TempPathFactory, http_port: int) -> Iterator[Path]:
    """A broker as ``make run`` starts it (embedded Redis, the KEK in a file under the state
    dir, state dir ``.corem`` in its working directory) with the admin API on ``http_port``;
    yields that directory."""
    cwd = tmp_path_factory.mktemp("dev")
    (cwd / ".corem").mkdir()
    (cwd / ".corem" / "psk-kek").write_text(generate_kek_line("dev") + "\n")
    (cwd / "dev.yaml").write_text(
        "credentials:\n"
        f"  api_key_overlap_s: {OVERLAP_S}\n"
        f"  api_key_overlap_max_s: {OVERLAP_MAX_S}\n"
    )
    health = free_port()
    env = _clean_env(
        COREM_PSK_KEK_FILE=".corem/psk-kek",
        COREM_HEALTH_PORT=str(health),
        COREM_HTTP_PORT=str(http_port),
        COREM_HTTP_ADMIN_TOKENS=f"acme:{hash_token(TOKEN)}:ops",
        COREM_MQTT_ENABLED="false",
        COREM_COAP_ENABLED="false",
        COREM_LOGGING_FORMAT="console",
    )
    log = cwd / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "corem_ingress", "serve", "--config", "dev.yaml"],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the dev broker did not become ready"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=1) as r:
                    if r.status == 200 and not json.loads(r.read())["degraded"]:
                        break
            except OSError:
                pass
            time.sleep(0.1)
        yield cwd
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_broker_records_where_its_kek_is_never_the_key(dev_broker: Path) -> None:
    pointer = dev_broker / ".corem" / "psk-kek.path"
    assert pointer.read_text().strip() == str((dev_broker / ".corem" / "psk-kek").resolve())
    kek = (dev_broker / ".corem" / "psk-kek").read_text().split(":", 1)[1].strip()
    assert kek not in pointer.read_text()


def test_psk_commands_find_the_dev_kek_through_the_state_dir(dev_broker: Path) -> None:
    args = ["devices", "provision", "--tenant", "acme", "--hardware-id", "SN-2"]
    r = cli([*args, "--credential", "psk"], dev_broker)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["created"] is True and len(bytes.fromhex(out["psk"])) == 32
    kek_file = (dev_broker / ".corem" / "psk-kek").resolve()
    assert r.stderr.splitlines() == [
        f"corem-ingress: note: using the PSK KEK file {kek_file} (of the broker on the "
        f"embedded Redis, found through .corem/)"
    ]
    rotated = cli(["psk", "rotate", "--tenant", "acme", "--device", out["device_id"]], dev_broker)
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout)["psk_identity"]
    resealed = cli(["psk", "reseal"], dev_broker)
    assert resealed.returncode == 0, resealed.stderr
    assert json.loads(resealed.stdout) == {"resealed": 0}  # all under the active KEK already
    # Commands that do not touch a PSK say nothing about the KEK.
    got = cli(["devices", "get", "--tenant", "acme", "--device", out["device_id"]], dev_broker)
    assert got.returncode == 0 and got.stderr == ""


def test_with_a_configured_redis_the_kek_must_be_configured(dev_broker: Path) -> None:
    """Production: Redis is configured, so the state dir is never consulted -- even when it
    holds a dev broker's KEK pointer (here: the very same Redis)."""
    url = (dev_broker / ".corem" / "redis.url").read_text().strip()
    args = ["devices", "provision", "--tenant", "acme", "--hardware-id", "SN-P"]
    r = cli([*args, "--credential", "psk"], dev_broker, COREM_REDIS_URL=url)
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.startswith("corem-ingress: error: FAILED_PRECONDITION: ")
    assert "COREM_PSK_KEK" in r.stderr and "note:" not in r.stderr
    # Given explicitly, it works (and no note: the operator named it).
    kek = str(dev_broker / ".corem" / "psk-kek")
    ok = cli(
        [*args, "--credential", "psk"], dev_broker, COREM_REDIS_URL=url, COREM_PSK_KEK_FILE=kek
    )
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr


def test_keys_list_has_the_admin_api_fields(dev_broker: Path, http_port: int) -> None:
    args = ["devices", "provision", "--tenant", "acme", "--hardware-id", "SN-K"]
    dev = json.loads(cli([*args, "--credential", "api_key"], dev_broker).stdout)
    device = dev["device_id"]
    second = cli(["keys", "create", "--tenant", "acme", "--device", device], dev_broker)
    assert second.returncode == 0, second.stderr
    revoke = ["keys", "revoke", "--tenant", "acme", "--key-id", dev["key_id"]]
    assert cli(revoke, dev_broker).returncode == 0
    r = cli(["keys", "list", "--tenant", "acme", "--device", device], dev_broker)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    # The admin API's records for this device (GET /api/v1/devices/{id}: "credentials").
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/api/v1/devices/{device}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        got = json.loads(resp.read())
    assert listed == {"device_id": device, "keys": got["credentials"]}
    assert [k["status"] for k in listed["keys"]] == ["revoked", "active"]
    assert [k["key_id"] for k in listed["keys"]] == [
        dev["key_id"],
        json.loads(second.stdout)["key_id"],
    ]
    assert all("api_key" not in k for k in listed["keys"])  # never a secret
    # Another tenant's device: not found, like one that does not exist.
    other = cli(["keys", "list", "--tenant", "globex", "--device", device], dev_broker)
    assert other.returncode != 0 and "NOT_FOUND" in other.stderr


def test_the_cli_applies_the_dev_brokers_config(dev_broker: Path) -> None:
    """The CLI given no config uses the one the broker was started with (recorded in the state
    dir), so the broker's API key overlap and its maximum hold for the CLI too. Before, it used
    the defaults: a rotation's old key lived a day, and 100,000 s passed a 1,200 s maximum."""
    pointer = dev_broker / ".corem" / "config.path"
    assert pointer.read_text().strip() == str((dev_broker / "dev.yaml").resolve())
    args = ["devices", "provision", "--tenant", "acme", "--hardware-id", "SN-O"]
    dev = json.loads(cli([*args, "--credential", "api_key"], dev_broker).stdout)
    rotate = ["keys", "rotate", "--tenant", "acme", "--key-id", dev["key_id"]]
    too_long = cli([*rotate, "--overlap", "100000"], dev_broker)
    assert too_long.returncode == 2 and too_long.stdout == ""
    assert too_long.stderr.startswith("corem-ingress: error: INVALID_ARGUMENT: overlap must not")
    before = time.time()
    rotated = cli(rotate, dev_broker)
    assert rotated.returncode == 0, rotated.stderr
    lasts = json.loads(rotated.stdout)["old_key_expires_at"] - before
    assert OVERLAP_S - 30 < lasts < OVERLAP_S + 30
    # Named explicitly, a config wins over the broker's (here: none, the defaults).
    empty = dev_broker / "empty.yaml"
    empty.write_text("{}\n")
    other = json.loads(
        cli(["keys", "create", "--tenant", "acme", "--device", dev["device_id"]], dev_broker).stdout
    )
    rotate_other = ["keys", "rotate", "--tenant", "acme", "--key-id", other["key_id"]]
    ok = cli(["--config", str(empty), *rotate_other, "--overlap", "100000"], dev_broker)
    assert ok.returncode == 0, ok.stderr
