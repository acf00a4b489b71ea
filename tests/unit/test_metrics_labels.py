"""Metric label normalisation keeps cardinality bounded (no I/O: the registry is in-process)."""

from corem_ingress import metrics


def test_auth_reasons_are_normalised() -> None:
    assert metrics.auth_reason("unknown or revoked") == "unknown_or_revoked"
    assert metrics.auth_reason("unknown or revoked (cached)") == "unknown_or_revoked"
    assert metrics.auth_reason("overlap window ended") == "overlap_ended"
    assert metrics.auth_reason("certificate expired") == "certificate_expired"
    assert metrics.auth_reason("corrupt record") == "corrupt_record"
    assert metrics.auth_reason("redis unreachable") == "unavailable"
    assert metrics.auth_reason("malformed") == "malformed"
    assert metrics.auth_reason("throttled") == "throttled"
    assert metrics.auth_reason("client sent 'DROP TABLE' 12345") == "other"


def test_unknown_transports_and_limits_become_other() -> None:
    before = metrics.LIMIT_REFUSALS.labels("other", "other")._value.get()
    metrics.limit_refused("carrier-pigeon", "moon-phase")
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
