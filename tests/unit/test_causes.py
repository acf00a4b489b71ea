"""The Cause table: what counts against a source, and each transport's reply (pure)."""

from __future__ import annotations

import pytest

from corem_ingress import metrics
from corem_ingress.core.causes import AUTH_CAUSES, LIMIT_CAUSES, Cause, CauseGroup

pytestmark = pytest.mark.unit


def test_every_cause_has_a_reply() -> None:
    for cause in Cause:
        reply = cause.reply
        assert reply.group is cause.group
        assert 0 <= cause.connack <= 5
        assert 0 <= cause.mqtt5 <= 0xA2
        assert cause.coap[0] in "245" and cause.coap[1] == "."
        assert 0 <= cause.dtls_alert <= 255
        assert 200 <= cause.http <= 599


def test_what_counts_against_the_source() -> None:
    """Redis being down is not held against the device; credential failures are."""
    counted = {c for c in Cause if c.counts_against_source}
    assert Cause.UNAVAILABLE not in counted
    assert counted >= {
        Cause.UNKNOWN_OR_REVOKED,
        Cause.CERTIFICATE_EXPIRED,
        Cause.BAD_CERTIFICATE,
        Cause.FOREIGN_CA,
        Cause.WRONG_KEY,
        Cause.MALFORMED,
        Cause.NO_CREDENTIAL,
    }
    # Only authentication failures count; limits and ordinary session ends never do.
    assert counted <= AUTH_CAUSES
    assert Cause.HANDSHAKE_TIMEOUT.group is CauseGroup.END
    assert not Cause.HANDSHAKE_TIMEOUT.counts_against_source


def test_replies_per_transport() -> None:
    assert (Cause.UNKNOWN_OR_REVOKED.connack, Cause.UNKNOWN_OR_REVOKED.http) == (5, 401)
    assert Cause.UNAVAILABLE.connack == 3 and Cause.UNAVAILABLE.coap == "5.03"
    assert Cause.MALFORMED.connack == 4
    assert Cause.DEVICE_RATE.coap == "4.29" and Cause.DEVICE_RATE.http == 429
    assert Cause.TENANT_CONNECTIONS.connack == 3
    assert Cause.UNKNOWN_OR_REVOKED.dtls_alert == 49  # access_denied, not internal_error
    assert Cause.WRONG_KEY.dtls_alert == 51  # decrypt_error


def test_metric_labels_are_the_cause_values() -> None:
    assert {c.label for c in AUTH_CAUSES} == metrics.AUTH_REASONS
    assert {c.label for c in LIMIT_CAUSES} == metrics.LIMITS
    assert len({c.label for c in Cause}) == len(Cause)
