import json

import pytest
import structlog

from corem_ingress import logs
from corem_ingress.core import api_keys

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    yield None
    logs.configure("console", "info")


def test_redaction_of_secret_fields_and_key_lookalikes(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", "info", "node-a")
    raw = api_keys.generate()
    log = structlog.get_logger("t")
    log.info(
        "evt",
        api_key=raw,
        psk="00" * 32,
        password="hunter2",
        authorization="Bearer " + raw,
        note=f"client sent {raw} in a header",
        key_id="key_123",
        psk_identity="id-1",
        pem="-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----",
    )
    out = capsys.readouterr().err.strip().splitlines()[-1]
    assert raw not in out and "hunter2" not in out and "00" * 32 not in out and "MIIB" not in out
    data = json.loads(out)
    assert data["api_key"] == logs.REDACTED
    assert data["key_id"] == "key_123" and data["psk_identity"] == "id-1"
    assert data["node"] == "node-a"
    assert data["event"] == "evt"
