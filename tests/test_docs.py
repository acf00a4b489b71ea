"""Docs that must track the code."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_current() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_doc.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_env_override_is_documented() -> None:
    from corem_ingress.config import env_names

    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in env_names() if f"`{name}`" not in text]
    assert missing == []


def test_key_schema_doc_names_every_key_function() -> None:
    from corem_ingress.store.keys import KeySchema

    text = (ROOT / "docs" / "redis-keys.md").read_text()
    k = KeySchema("P")
    from corem_ingress.core.identity import CredentialKind

    samples = [
        k.device("<device_id>"),
        k.device_credentials("<device_id>"),
        k.hardware("<tenant>", "<hardware_id>"),
        k.tenant_devices("<tenant>"),
        k.tenant_certs("<tenant>"),
        k.tenant_cas("<tenant>"),
        k.tenant_ca("<tenant>", "<fingerprint>"),
        k.tenant_settings("<tenant>"),
        k.challenge("<token>"),
        k.tenant_challenges("<tenant>"),
        k.credential("<credential_id>"),
        k.audit_stream,
        k.uplink_stream("<tenant>"),
        k.downlink_stream("<tenant>"),
        k.bus_channel,
        k.downlink_channel,
        k.limits_nodes,
        k.limits_connections("<node_id>"),
        k.limits_blocks,
        k.cid_nodes,
        k.cid_forward_key,
        k.dtls_session("<session_id_hex>"),
        k.dtls_session_keys,
        k.lwm2m_registration("<registration_id>"),
        k.claim("<claim_id>"),
        k.tenant_claims("<tenant>"),
        k.enrolment("<tenant>", "<hardware_id>"),
        k.lwm2m_device("<device_id>"),
        k.lwm2m_requests("<node_id>"),
        k.lwm2m_reply("<request_id>"),
        k.sessions_nodes,
        k.node_sessions("<node_id>", "<tenant>"),
        k.node_status("<node_id>"),
        k.sessions_channel,
        k.lwm2m_events("<tenant>"),
        k.lwm2m_awake("<device_id>"),
        k.lwm2m_queue("<device_id>"),
        k.lwm2m_queued("<request_id>"),
        k.lwm2m_queue_deadlines,
        k.firmware_image("<image_id>"),
        k.firmware_chunk("<image_id>", 0),
        k.tenant_firmware("<tenant>"),
        k.firmware_campaign("<campaign_id>"),
        k.firmware_job("<job_id>"),
        k.firmware_device_job("<device_id>"),
        k.firmware_token("<token>"),
        k.device_session("<device_id>"),
        k.downlink_queue("<device_id>"),
        k.downlink_sent("<device_id>"),
        k.downlink_reply("<message_id>"),
        k.device_will("<device_id>"),
    ] + [k.lookup(kind, "") for kind in CredentialKind]
    for key in samples:
        assert key in text or key.rstrip(":") in text, key


def test_console_doc_lists_every_security_header_the_console_sends() -> None:
    """docs/console.md's header block had left out Cross-Origin-Opener-Policy."""
    from corem_ingress.adapters.http.console import SECURITY_HEADERS

    text = (ROOT / "docs" / "console.md").read_text()
    block = text.split("Console responses (`/console/`, its three files) carry:")[1]
    lines = block.split("```")[1].strip().splitlines()
    assert lines == [f"{name}: {value}" for name, value in SECURITY_HEADERS.items()]
