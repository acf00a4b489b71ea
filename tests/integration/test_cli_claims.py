"""`corem-ingress claims create|list|revoke`: JSON out, the secret once, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_cli import env, fails, ok  # noqa: F401 (env is a fixture)


def test_claims_create_list_revoke(env: dict[str, str]) -> None:  # noqa: F811
    created = ok(
        [
            "claims",
            "create",
            "--tenant",
            "acme",
            "--kind",
            "psk",
            "--credential-kind",
            "psk",
            "--max-uses",
            "100",
            "--expires",
            "30d",
        ],
        env,
    )
    assert created["kind"] == "psk" and created["credential_kind"] == "psk"
    assert created["psk_identity"].startswith("claim.") and len(created["psk"]) >= 64
    assert created["max_uses"] == 100 and created["uses"] == 0
    keyed = ok(["claims", "create", "--tenant", "acme", "--max-uses", "1"], env)
    assert keyed["claim_key"].startswith("ck_live_") and keyed["expires_at"] is None

    listed = ok(["claims", "list", "--tenant", "acme"], env)["claims"]
    assert {c["claim_id"] for c in listed} == {created["claim_id"], keyed["claim_id"]}
    assert all("psk" not in c and "claim_key" not in c for c in listed)

    revoked = ok(["claims", "revoke", "--tenant", "acme", "--claim", keyed["claim_id"]], env)
    assert revoked["status"] == "revoked"
    assert "not found" in fails(
        ["claims", "revoke", "--tenant", "globex", "--claim", created["claim_id"]], env
    )


@pytest.mark.parametrize(
    "extra",
    [
        ["--max-uses", "0"],
        ["--max-uses", "5", "--expires", "yesterday"],
        ["--max-uses", "5", "--kind", "x509"],
        ["--max-uses", "5", "--expires", "2001-01-01T00:00:00Z"],
    ],
)
def test_bad_claims_are_one_line_errors(env: dict[str, str], extra: list[str]) -> None:  # noqa: F811
    fails(["claims", "create", "--tenant", "acme", *extra], env)


def test_cas_auto_provision(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    from corem_ingress import devcerts

    ca = devcerts.make_ca("cli jitp CA")
    ca.write(tmp_path / "ca.pem", tmp_path / "ca.key")
    fp = ok(["cas", "add", "--tenant", "acme", "--cert", str(tmp_path / "ca.pem")], env)[
        "fingerprint"
    ]
    on = ok(
        [
            "cas",
            "auto-provision",
            "--tenant",
            "acme",
            "--fingerprint",
            fp,
            "--hardware-id-from",
            "serial",
            "--metadata",
            "site=lyon",
            "--allow-certificate-rotation",
        ],
        env,
    )
    assert on["auto_provision"] and on["template"]["metadata"] == {"site": "lyon"}
    assert on["template"]["hardware_id_from"] == "serial"
    off = ok(["cas", "auto-provision", "--tenant", "acme", "--fingerprint", fp, "--off"], env)
    assert off == {"ca_fingerprint": fp, "auto_provision": False, "template": None}
    fails(
        ["cas", "auto-provision", "--tenant", "acme", "--fingerprint", fp, "--metadata", "x"], env
    )
    assert "CA not found" in fails(
        ["cas", "auto-provision", "--tenant", "acme", "--fingerprint", "0" * 64], env
    )
