"""`corem-ingress claims create|list|revoke`: JSON out, the secret once, one-line errors."""

from __future__ import annotations

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
