"""The `corem-ingress` command as operators run it: JSON out, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corem_ingress import devcerts
from corem_ingress.embedded_redis import free_port

#: An operator-assigned PSK (random bytes: trivially guessable keys are refused).
ASSIGNED_PSK = "2ccb2ebd0ee4261b68e62446b43c459fbb0b282ffa69e4f1b3f9b60dd30289fa"


def run(
    args: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corem_ingress", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def env(redis, redis_url: str, kek_env: str, tmp_path: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    e = dict(os.environ)
    e.update(
        {
            "COREM_REDIS_URL": redis_url,
            "COREM_PSK_KEK": kek_env,
            "COREM_STATE_DIR": str(tmp_path / "state"),
        }
    )
    return e


def ok(args: list[str], env: dict[str, str], stdin: str | None = None) -> dict:  # type: ignore[type-arg]
    r = run(args, env, stdin)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def fails(args: list[str], env: dict[str, str], code: int = 2) -> str:
    r = run(args, env)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("corem-ingress: error: ")
    return lines[0]


def test_provision_each_kind_and_idempotency(env: dict[str, str], tmp_path: Path) -> None:
    out = ok(
        [
            "devices",
            "provision",
            "--tenant",
            "acme",
            "--hardware-id",
            "hw-1",
            "--credential",
            "api_key",
        ],
        env,
    )
    assert out["created"] is True and out["api_key"].startswith("sk_live_")
    assert set(out) == {
        "device_id",
        "tenant_id",
        "hardware_id",
        "credential_kind",
        "created",
        "api_key",
        "key_id",
    }
    again = ok(
        [
            "devices",
            "provision",
            "--tenant",
            "acme",
            "--hardware-id",
            "hw-1",
            "--credential",
            "api_key",
        ],
        env,
    )
    assert (
        again["created"] is False
        and "api_key" not in again
        and again["device_id"] == out["device_id"]
    )

    psk = ok(
        [
            "devices",
            "provision",
            "--tenant",
            "acme",
            "--hardware-id",
            "hw-2",
            "--credential",
            "psk",
            "--psk-identity",
            "acme:lamp-1",
            "--psk-hex",
            ASSIGNED_PSK,
        ],
        env,
    )
    assert psk["psk_identity"] == "acme:lamp-1" and psk["psk"] == ASSIGNED_PSK

    ca = devcerts.make_ca()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    ok(["cas", "add", "--tenant", "acme", "--cert", str(tmp_path / "ca.pem")], env)
    cert = devcerts.issue(ca, "dev")
    pem = tmp_path / "d.pem"
    pem.write_bytes(cert.cert_pem)
    x = ok(
        [
            "devices",
            "provision",
            "--tenant",
            "acme",
            "--hardware-id",
            "hw-3",
            "--credential",
            "x509",
            "--cert",
            str(pem),
        ],
        env,
    )
    assert x["fingerprint"] == cert.fingerprint and "api_key" not in x and "psk" not in x

    got = ok(["devices", "get", "--tenant", "acme", "--device", out["device_id"]], env)
    assert got["hardware_id"] == "hw-1" and got["credentials"][0]["key_id"] == out["key_id"]
    listed = ok(["devices", "list", "--tenant", "acme", "--limit", "2"], env)
    assert len(listed["devices"]) == 2 and listed["next_cursor"] == "2"
    page2 = ok(["devices", "list", "--tenant", "acme", "--cursor", "2"], env)
    assert len(page2["devices"]) == 1 and page2["next_cursor"] is None
    by_hw = ok(["devices", "list", "--tenant", "acme", "--hardware-id", "hw-2"], env)
    assert by_hw["devices"][0]["device_id"] == psk["device_id"]


def test_credential_commands(env: dict[str, str], tmp_path: Path) -> None:
    dev = ok(
        [
            "devices",
            "provision",
            "--tenant",
            "acme",
            "--hardware-id",
            "k1",
            "--credential",
            "api_key",
        ],
        env,
    )
    created = ok(["keys", "create", "--tenant", "acme", "--device", dev["device_id"]], env)
    assert created["api_key"].startswith("sk_live_") and created["key_id"] != dev["key_id"]
    rotated = ok(
        ["keys", "rotate", "--tenant", "acme", "--key-id", dev["key_id"], "--overlap", "60"], env
    )
    assert rotated["replaces"] == dev["key_id"] and rotated["old_key_expires_at"] > 0
    revoked = ok(["keys", "revoke", "--tenant", "acme", "--key-id", created["key_id"]], env)
    assert revoked["status"] == "revoked"
    assert "NOT_FOUND" in fails(
        ["keys", "revoke", "--tenant", "other", "--key-id", rotated["key_id"]], env
    )

    p = ok(
        ["devices", "provision", "--tenant", "acme", "--hardware-id", "p1", "--credential", "psk"],
        env,
    )
    r = ok(["psk", "rotate", "--tenant", "acme", "--device", p["device_id"]], env)
    assert r["psk_identity"] != p["psk_identity"] and len(bytes.fromhex(r["psk"])) == 32
    assert (
        ok(["psk", "revoke", "--tenant", "acme", "--device", p["device_id"]], env)["status"]
        == "revoked"
    )

    ca = devcerts.make_ca()
    ok(["cas", "add", "--tenant", "acme", "--cert", "-"], env, stdin=ca.cert_pem.decode())
    c = devcerts.issue(ca, "c")
    x = ok(
        ["devices", "provision", "--tenant", "acme", "--hardware-id", "x1", "--credential", "x509"],
        env,
    )
    reg = ok(
        ["certs", "register", "--tenant", "acme", "--device", x["device_id"], "--cert", "-"],
        env,
        stdin=c.cert_pem.decode(),
    )
    assert reg["fingerprint"] == c.fingerprint and reg["status"] == "active"
    lst = ok(["certs", "list", "--tenant", "acme", "--device", x["device_id"]], env)
    assert [i["fingerprint"] for i in lst["certs"]] == [c.fingerprint]
    assert (
        ok(["certs", "revoke", "--tenant", "acme", "--fingerprint", c.fingerprint], env)["status"]
        == "revoked"
    )
    assert "NOT_FOUND" in fails(
        ["certs", "revoke", "--tenant", "globex", "--fingerprint", c.fingerprint], env
    )

    sent = ok(
        [
            "downlink",
            "--tenant",
            "acme",
            "--device",
            x["device_id"],
            "--kind",
            "config",
            "--payload",
            '{"rate": 5}',
            "--json",
        ],
        env,
    )
    assert len(sent["message_id"]) == 32
    # Issue 13: what happened, not a bare id (this device never connected: nothing to queue).
    assert (sent["state"], sent["reason"]) == ("dropped", "no_session")
    line = run(
        [
            "downlink",
            "--tenant",
            "acme",
            "--device",
            x["device_id"],
            "--kind",
            "c",
            "--payload",
            "1",
        ],
        env,
    ).stdout
    assert line.count("\n") == 1 and line.startswith('{"state":"dropped"'), line


def test_bad_input_is_one_line_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    fails(
        [
            "devices",
            "provision",
            "--tenant",
            "acme",
            "--hardware-id",
            "h",
            "--credential",
            "password",
        ],
        env,
    )
    fails(
        [
            "devices",
            "provision",
            "--tenant",
            "ACME!",
            "--hardware-id",
            "h",
            "--credential",
            "api_key",
        ],
        env,
    )
    fails(
        [
            "devices",
            "provision",
            "--tenant",
            "acme",
            "--hardware-id",
            "h",
            "--credential",
            "psk",
            "--psk-hex",
            "zz",
        ],
        env,
    )
    fails(
        [
            "devices",
            "provision",
            "--tenant",
            "acme",
            "--hardware-id",
            "h",
            "--credential",
            "psk",
            "--psk-hex",
            "ab",
        ],
        env,
    )
    # Issue 12 §4: 32 zero bytes (or any repeated pattern) is not a key.
    msg = fails(
        [
            "devices",
            "provision",
            "--tenant",
            "acme",
            "--hardware-id",
            "h",
            "--credential",
            "psk",
            "--psk-hex",
            "00" * 32,
        ],
        env,
    )
    assert "entropy" in msg and "00" * 8 not in msg
    fails(["devices", "get", "--tenant", "acme"], env)
    fails(["devices", "get", "--tenant", "acme", "--device", "nope"], env)
    fails(["keys", "rotate", "--tenant", "acme", "--key-id", "k", "--overlap", "-5"], env)
    fails(["devices", "list", "--tenant", "acme", "--limit", "0"], env)
    fails(["nonsense"], env)
    key = tmp_path / "leak.pem"
    leaf = devcerts.issue(devcerts.make_ca(), "x")
    key.write_bytes(leaf.cert_pem + leaf.key_pem)
    msg = fails(
        [
            "devices",
            "provision",
            "--tenant",
            "acme",
            "--hardware-id",
            "h",
            "--credential",
            "x509",
            "--cert",
            str(key),
        ],
        env,
    )
    assert "private key" in msg and "BEGIN" not in msg
    fails(
        [
            "devices",
            "provision",
            "--tenant",
            "acme",
            "--hardware-id",
            "h",
            "--credential",
            "x509",
            "--cert",
            "/nope.pem",
        ],
        env,
    )
    assert "config" in fails(
        ["devices", "list", "--tenant", "acme"], {**env, "COREM_RESOLVER_CACHE_TTL_S": "x"}
    )


def test_unreachable_redis_is_exit_1(env: dict[str, str]) -> None:
    dead = {
        **env,
        "COREM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "COREM_REDIS_SOCKET_TIMEOUT_S": "0.5",
    }
    fails(
        [
            "devices",
            "provision",
            "--tenant",
            "acme",
            "--hardware-id",
            "h",
            "--credential",
            "api_key",
        ],
        dead,
        code=1,
    )
    fails(["devices", "list", "--tenant", "acme"], dead, code=1)
    no_url = {k: v for k, v in env.items() if k != "COREM_REDIS_URL"}
    said = fails(["devices", "list", "--tenant", "acme"], no_url, code=1)
    assert "no Redis configured" in said
    # Which file it looked for (a dev broker started in another directory is not found).
    assert "/redis.url: run the CLI where the broker runs" in said


def test_dev_certs(tmp_path: Path, env: dict[str, str]) -> None:
    out = ok(["dev-certs", "--out", str(tmp_path / "c")], env)
    for name in (
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "devices/device-1.pem",
        "devices/device-1.key",
    ):
        assert (tmp_path / "c" / name).exists(), name
    assert oct((tmp_path / "c" / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert "DEV ONLY" in out["warning"] and len(out["devices"]) == 4
    from cryptography import x509

    server = x509.load_pem_x509_certificate((tmp_path / "c" / "server.pem").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}


def test_kek_generate_is_usable(env: dict[str, str]) -> None:
    r = run(["kek", "generate", "--id", "k2"], env)
    assert r.returncode == 0
    from corem_ingress.core.psk import KeyRing

    assert KeyRing.parse(r.stdout).active_kid == "k2"


def test_trust_anchor_commands(env: dict[str, str], tmp_path: Path) -> None:
    """cas add|list|remove, tenants settings, certs challenge|sign-challenge|check-issuers,
    and registration with a proof of possession, as an operator runs them."""
    ca = devcerts.make_ca("acme CA")
    ca.write(tmp_path / "ca.pem", tmp_path / "ca.key")
    added = ok(["cas", "add", "--tenant", "acme", "--cert", str(tmp_path / "ca.pem")], env)
    assert added["added"] is True and added["fingerprint"] == ca.fingerprint
    listed = ok(["cas", "list", "--tenant", "acme"], env)
    assert [c["fingerprint"] for c in listed["cas"]] == [ca.fingerprint]
    assert "NOT_FOUND" in fails(
        ["cas", "remove", "--tenant", "globex", "--fingerprint", ca.fingerprint], env
    )
    fails(["cas", "remove", "--tenant", "acme"], env)  # neither --cert nor --fingerprint

    # A self-signed device: the tenant allows it, the key signs a challenge.
    dev = devcerts.issue(None, "self-signed")
    dev.write(tmp_path / "dev.pem", tmp_path / "dev.key")
    settings = ok(["tenants", "settings", "--tenant", "acme"], env)
    assert settings == {"tenant_id": "acme", "allow_self_signed": False}
    provision = ["devices", "provision", "--tenant", "acme", "--hardware-id", "ss"]
    provision += ["--credential", "x509", "--cert", str(tmp_path / "dev.pem")]
    assert "FAILED_PRECONDITION" in fails(provision, env)
    on = ok(["tenants", "settings", "--tenant", "acme", "--allow-self-signed", "on"], env)
    assert on["allow_self_signed"] is True
    assert "proof of possession" in fails(provision, env)
    challenge = ok(["certs", "challenge", "--tenant", "acme"], env)["challenge"]
    assert challenge.startswith("corem-pop-v1:acme:")
    signed = ok(
        ["certs", "sign-challenge", "--key", str(tmp_path / "dev.key"), "--challenge", challenge],
        env,
    )
    out = ok([*provision, "--challenge", challenge, "--signature", signed["signature"]], env)
    assert out["fingerprint"] == dev.fingerprint
    # The challenge was used: a second use is refused.
    assert "already used" in fails(
        [*provision[:5], "ss2", *provision[6:], "--challenge", challenge, "--signature", "AA=="],
        env,
    )
    fails([*provision, "--challenge", challenge], env)  # --signature missing
    fails(["certs", "sign-challenge", "--key", str(tmp_path / "dev.pem"), "--challenge", "c"], env)

    # The upgrade check; then removing the CA by its certificate.
    c = devcerts.issue(ca, "c")
    (tmp_path / "c.pem").write_bytes(c.cert_pem)
    ok(
        ["devices", "provision", "--tenant", "acme", "--hardware-id", "c", "--credential", "x509",
         "--cert", str(tmp_path / "c.pem")],
        env,
    )  # fmt: skip
    removed = ok(["cas", "remove", "--tenant", "acme", "--cert", str(tmp_path / "ca.pem")], env)
    assert removed["fingerprint"] == ca.fingerprint
    report = ok(["certs", "check-issuers", "--tenant", "acme"], env)
    assert [(p["fingerprint"], p["problem"]) for p in report["problems"]] == [
        (c.fingerprint, "issuing_ca_removed")
    ]


def test_reader_closing_the_pipe_is_not_a_redis_error() -> None:
    """`corem-ingress version | head -1`: a closed stdout is the reader leaving, not Redis
    being unreachable (it used to print "cannot reach Redis: [Errno 32] Broken pipe")."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before we write a byte
    try:
        out = subprocess.run(
            [sys.executable, "-m", "corem_ingress", "version"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert out.stderr == ""
    assert out.returncode == 141  # 128 + SIGPIPE, as a C tool killed by SIGPIPE
