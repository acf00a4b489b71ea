"""Metric label normalisation keeps cardinality bounded (no I/O: the registry is in-process)."""

import pytest

from corem_ingress import metrics
from corem_ingress.core.causes import Cause

pytestmark = pytest.mark.unit


def test_auth_failure_labels_are_cause_labels() -> None:
    """Labels come from the Cause enum: no text is parsed, cardinality is fixed."""
    c = metrics.AUTH_FAILURES.labels("mqtt", "wrong_key")
    before = c._value.get()
    metrics.auth_failure("mqtt", Cause.WRONG_KEY)
    assert c._value.get() == before + 1
    # A cause of another group passed by mistake is bounded to "other", never a new label.
    other = metrics.AUTH_FAILURES.labels("mqtt", "other")
    before = other._value.get()
    metrics.auth_failure("mqtt", Cause.IDLE)
    assert other._value.get() == before + 1


def test_unknown_transports_and_limits_become_other() -> None:
    before = metrics.LIMIT_REFUSALS.labels("other", "other")._value.get()
    metrics.limit_refused("carrier-pigeon", Cause.PEER_CLOSED)
    assert metrics.LIMIT_REFUSALS.labels("other", "other")._value.get() == before + 1


def test_tenant_labels_are_bounded(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(metrics, "MAX_TENANT_LABELS", 2)
    monkeypatch.setattr(metrics, "_tenants", set())
    assert metrics.tenant_label("a") == "a"
    assert metrics.tenant_label("b") == "b"
    assert metrics.tenant_label("c") == "_other"
    assert metrics.tenant_label("a") == "a"


def test_exposition_names_the_documented_metrics() -> None:
    text = metrics.exposition().decode()
    for name in (
        "corem_connections_total",
        "corem_auth_failures_total",
        "corem_uplink_append_seconds",
        "corem_revoke_to_disconnect_seconds",
        "corem_resolver_cache_hit_ratio",
        "corem_sessions_live",
        "corem_redis_errors_total",
    ):
        assert f"# HELP {name.removesuffix('_total')}" in text, name
