"""Prometheus metrics, served on the health port at ``/metrics`` (see docs/operations.md).

One process-wide registry (``REGISTRY``). The foundation records what it can measure
itself (resolver, session hub, registry, bus, uplink appends); adapters call the small
helpers below, one line each, e.g.::

    metrics.connection_opened("mqtt")
    metrics.handshake("coap", ok=False)
    metrics.auth_failure("http", exc.cause)           # a core.causes.Cause
    metrics.session_opened("mqtt", identity.tenant_id)
    metrics.limit_refused("mqtt", Cause.AUTH_THROTTLE)

Label cardinality is bounded: ``transport`` and ``kind`` are small enums, ``reason`` and
``limit`` are ``Cause`` labels, ``action`` and ``outcome`` come from fixed sets (anything
else is ``other``),
and the ``tenant`` label -- only on session metrics -- keeps the first
``MAX_TENANT_LABELS`` tenants seen by this process; later ones are counted as ``_other``.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter as _Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from corem_ingress.core.causes import AUTH_CAUSES, END_CAUSES, LIMIT_CAUSES, Cause

if TYPE_CHECKING:
    from corem_ingress.core.throttle import AuthThrottle
    from corem_ingress.resolver import Resolver
    from corem_ingress.session_hub import SessionHub

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Distinct tenant label values this process reports; more tenants are summed as "_other".
MAX_TENANT_LABELS = 1000
OTHER = "other"
TRANSPORTS = frozenset({"mqtt", "coap", "lwm2m", "http", "dtls"})
#: Label values of the three cause groups (``core/causes.py``): fixed sets.
AUTH_REASONS = frozenset(c.label for c in AUTH_CAUSES)
LIMITS = frozenset(c.label for c in LIMIT_CAUSES)
DISCONNECT_REASONS = frozenset(c.label for c in END_CAUSES)

# Latency buckets (seconds): Redis appends take ~0.1-5 ms; revocations cross nodes in ms.
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

CONNECTIONS = Counter(
    "corem_connections",
    "Connections (TCP) or DTLS peers accepted, before authentication.",
    ["transport"],
    registry=REGISTRY,
)
SESSIONS = Counter(
    "corem_sessions_opened",
    "Authenticated sessions opened.",
    ["transport", "tenant"],
    registry=REGISTRY,
)
HANDSHAKES = Counter(
    "corem_handshakes",
    "TLS/DTLS handshakes by outcome (ok, failed).",
    ["transport", "outcome"],
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "corem_auth_failures",
    "Refused authentications, by transport and normalised reason.",
    ["transport", "reason"],
    registry=REGISTRY,
)
RESOLVER_REFUSALS = Counter(
    "corem_resolver_refusals",
    "Credentials the resolver refused, by credential kind and normalised reason.",
    ["kind", "reason"],
    registry=REGISTRY,
)
LIMIT_REFUSALS = Counter(
    "corem_limit_refusals",
    "Connections, handshakes or messages refused by a limit.",
    ["transport", "limit"],
    registry=REGISTRY,
)
PROXY_REFUSALS = Counter(
    "corem_proxy_refusals",
    "TCP connections closed over their PROXY protocol header (untrusted source, malformed, "
    "or missing where required).",
    ["transport"],
    registry=REGISTRY,
)
UPLINKS = Counter(
    "corem_uplinks",
    "Uplink appends to the tenant stream, by outcome (ok: acknowledged; failed: not).",
    ["transport", "outcome"],
    registry=REGISTRY,
)
UPLINK_APPEND_SECONDS = Histogram(
    "corem_uplink_append_seconds",
    "Time to append one uplink to its Redis stream (successful appends).",
    ["transport"],
    buckets=_FAST,
    registry=REGISTRY,
)
DOWNLINKS = Counter(
    "corem_downlinks",
    "Downlinks sent through this process, by state (delivered, queued, dropped) and drop "
    "reason (empty unless dropped).",
    ["state", "reason"],
    registry=REGISTRY,
)
DOWNLINKS_DROPPED = Counter(
    "corem_downlink_drops",
    "Downlinks dropped, by reason: queue_full (the oldest queued made room), expired, "
    "not_subscribed, no_session, qos0_offline, not_delivered.",
    ["reason"],
    registry=REGISTRY,
)
REVOCATIONS = Counter(
    "corem_revocations",
    "Revoked-credential events received by this node from the bus.",
    ["kind"],
    registry=REGISTRY,
)
REVOKE_TO_DISCONNECT_SECONDS = Histogram(
    "corem_revoke_to_disconnect_seconds",
    "From the revocation (registry clock) to this node ordering its sessions to disconnect.",
    buckets=_FAST,
    registry=REGISTRY,
)
DISCONNECTS = Counter(
    "corem_disconnect_orders",
    "Sessions this node told to go, by transport and reason.",
    ["transport", "reason"],
    registry=REGISTRY,
)
CREDENTIAL_OPERATIONS = Counter(
    "corem_credential_operations",
    "Registry operations (provision, create, rotate, revoke, register, reseal) by outcome.",
    ["action", "outcome"],
    registry=REGISTRY,
)
BUS_EVENTS = Counter(
    "corem_bus_events",
    "Credential events received on the revocation bus, by type.",
    ["type"],
    registry=REGISTRY,
)
BUS_RESYNCS = Counter(
    "corem_bus_resyncs",
    "Bus re-subscriptions after a gap (cache dropped, live sessions re-validated).",
    registry=REGISTRY,
)
REDIS_ERRORS = Counter(
    "corem_redis_errors",
    "Redis commands that failed (unreachable, timeout, cluster down), by component.",
    ["component"],
    registry=REGISTRY,
)
DTLS_SESSIONS_NOT_STORED = Counter(
    "corem_dtls_sessions_not_stored",
    "DTLS sessions issued for resumption but never stored, by reason: queue_full (Redis too "
    "slow: the oldest queued ones dropped), store_failed (the batch's write failed).",
    ["reason"],
    registry=REGISTRY,
)
DTLS_CID_ADDRESS_CHANGES = Counter(
    "corem_dtls_cid_address_changes",
    "DTLS Connection ID sessions moved to a new address (NAT rebinding, RFC 9146 6).",
    registry=REGISTRY,
)
DTLS_CID_FORWARDED = Counter(
    "corem_dtls_cid_forwarded",
    "DTLS CID records forwarded between nodes: out (to the owning node), in (from another "
    "node), back (its answers sent on for the owner), refused (failed authentication).",
    ["direction"],
    registry=REGISTRY,
)
DTLS_RESUMPTIONS = Counter(
    "corem_dtls_resumptions",
    "DTLS ClientHellos naming a session id, by outcome: resumed (abbreviated handshake "
    "completed), full_handshake (session not found or not resumable as asked), refused "
    "(credential revoked/unknown/changed: alert), finished_failed (the client's Finished "
    "did not verify: alert).",
    ["outcome"],
    registry=REGISTRY,
)

OUTAGE_GRACE = Counter(
    "corem_resolver_outage_grace",
    "Authentications vouched for by the outage grace (Redis could not be asked), by kind.",
    ["kind"],
    registry=REGISTRY,
)
DEGRADED = Gauge(
    "corem_degraded",
    "1 while this node serves in a degraded mode (a dependency down: see /readyz), else 0.",
    registry=REGISTRY,
)
DEPENDENCY_UP = Gauge(
    "corem_dependency_up",
    "1 when the dependency answers (redis: PING within the timeout; bus: subscribed).",
    ["dependency"],
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "corem_build_info",
    "1, labelled with the version and whether the hot modules run compiled (mypyc) or pure "
    "(corem_ingress/compiled.py: compiled, pure or mixed).",
    ["version", "modules"],
    registry=REGISTRY,
)

_ACTIONS = frozenset(
    {
        "devices.provision",
        "keys.create",
        "keys.rotate",
        "keys.revoke",
        "psk.rotate",
        "psk.revoke",
        "psk.reseal",
        "certs.register",
        "certs.revoke",
        "cas.add",
        "cas.remove",
        "tenants.settings",
        "challenges.create",
    }
)
_COMPONENTS = frozenset({"resolver", "registry", "uplinks", "bus", "downlinks", "adapter"})

_tenants: set[str] = set()
_tenants_lock = threading.Lock()


def _one_of(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER


def _transport(transport: str) -> str:
    return _one_of(str(transport).lower(), TRANSPORTS)


def tenant_label(tenant_id: str) -> str:
    """The tenant itself for the first MAX_TENANT_LABELS tenants, else ``_other``."""
    with _tenants_lock:
        if tenant_id in _tenants:
            return tenant_id
        if len(_tenants) < MAX_TENANT_LABELS:
            _tenants.add(tenant_id)
            return tenant_id
    return "_other"


# -- helpers for adapters (one line each) ----------------------------------------------------
def build_info(version: str, modules: str) -> None:
    BUILD_INFO.clear()
    BUILD_INFO.labels(version=version, modules=modules).set(1)


def connection_opened(transport: str) -> None:
    CONNECTIONS.labels(_transport(transport)).inc()


def session_opened(transport: str, tenant_id: str) -> None:
    SESSIONS.labels(_transport(transport), tenant_label(tenant_id)).inc()


def cid_address_changed() -> None:
    DTLS_CID_ADDRESS_CHANGES.inc()


def cid_forwarded(direction: str) -> None:
    DTLS_CID_FORWARDED.labels(_one_of(direction, _CID_DIRECTIONS)).inc()


_CID_DIRECTIONS = frozenset({"out", "in", "back", "refused"})
_RESUMPTION_OUTCOMES = frozenset({"resumed", "full_handshake", "refused", "finished_failed"})
_NOT_STORED_REASONS = frozenset({"queue_full", "store_failed"})


def dtls_resumption(outcome: str) -> None:
    DTLS_RESUMPTIONS.labels(_one_of(outcome, _RESUMPTION_OUTCOMES)).inc()


def dtls_sessions_not_stored(reason: str, n: int) -> None:
    DTLS_SESSIONS_NOT_STORED.labels(_one_of(reason, _NOT_STORED_REASONS)).inc(n)


def handshake(transport: str, *, ok: bool) -> None:
    HANDSHAKES.labels(_transport(transport), "ok" if ok else "failed").inc()


def auth_failure(transport: str, cause: Cause) -> None:
    """A refused (or uncheckable) credential: ``cause`` is one of the AUTH group."""
    AUTH_FAILURES.labels(_transport(transport), _one_of(cause.label, AUTH_REASONS)).inc()


def proxy_refused(transport: str) -> None:
    PROXY_REFUSALS.labels(_transport(transport)).inc()


def limit_refused(transport: str, cause: Cause) -> None:
    """A limit refused a connection, handshake or message: ``cause`` is one of the LIMIT group."""
    LIMIT_REFUSALS.labels(_transport(transport), _one_of(cause.label, LIMITS)).inc()


_DOWNLINK_STATES = frozenset({"delivered", "queued", "dropped"})
_DROP_REASONS = frozenset(
    {"", "queue_full", "expired", "not_subscribed", "no_session", "qos0_offline", "not_delivered"}
)


def downlink_outcome(state: str, reason: str) -> None:
    DOWNLINKS.labels(_one_of(state, _DOWNLINK_STATES), _one_of(reason, _DROP_REASONS)).inc()
    if state == "dropped":
        downlink_dropped(reason)


def downlink_dropped(reason: str, count: int = 1) -> None:
    DOWNLINKS_DROPPED.labels(_one_of(reason, _DROP_REASONS)).inc(count)


def redis_error(component: str) -> None:
    REDIS_ERRORS.labels(_one_of(component, _COMPONENTS)).inc()


# -- used by the foundation ------------------------------------------------------------------
def resolver_refused(kind: str, cause: Cause) -> None:
    RESOLVER_REFUSALS.labels(kind, _one_of(cause.label, AUTH_REASONS)).inc()


def uplink_appended(transport: str, seconds: float) -> None:
    # Per HTTP uplink: the labelled children are looked up once per transport, not per
    # call (``labels()`` costs ~2 us: about 1 % of a request's CPU).
    children = _uplink_ok.get(transport)
    if children is None:
        t = _transport(transport)
        children = _uplink_ok[transport] = (
            UPLINKS.labels(t, "ok"),
            UPLINK_APPEND_SECONDS.labels(t),
        )
    children[0].inc()
    children[1].observe(max(0.0, seconds))


_uplink_ok: dict[str, tuple[Counter, Histogram]] = {}


def uplink_failed(transport: str) -> None:
    UPLINKS.labels(_transport(transport), "failed").inc()
    redis_error("uplinks")


def disconnect_ordered(transport: str, cause: Cause) -> None:
    DISCONNECTS.labels(_transport(transport), _one_of(cause.label, DISCONNECT_REASONS)).inc()


def revocation_received(kind: str, *, disconnected: int, latency_s: float) -> None:
    REVOCATIONS.labels(kind).inc()
    if disconnected:
        REVOKE_TO_DISCONNECT_SECONDS.observe(max(0.0, latency_s))


def credential_operation(action: str, outcome: str) -> None:
    CREDENTIAL_OPERATIONS.labels(_one_of(action, _ACTIONS), outcome).inc()


def bus_event(type_: str) -> None:
    BUS_EVENTS.labels(type_).inc()


def bus_resync() -> None:
    BUS_RESYNCS.inc()


def outage_grace_used(kind: str) -> None:
    OUTAGE_GRACE.labels(kind).inc()


def dependencies(up: dict[str, bool]) -> None:
    """The node's view of its dependencies (health watcher): per dependency and degraded."""
    for name, ok in up.items():
        DEPENDENCY_UP.labels(name).set(1 if ok else 0)
    DEGRADED.set(0 if all(up.values()) else 1)


# -- values read at scrape time ----------------------------------------------------------------
class _NodeCollector(Collector):
    """Resolver cache hits/misses/ratio and live sessions, summed over this process's nodes."""

    def __init__(self) -> None:
        self.resolvers: weakref.WeakSet[Resolver] = weakref.WeakSet()
        self.hubs: weakref.WeakSet[SessionHub] = weakref.WeakSet()
        self.throttles: weakref.WeakSet[AuthThrottle] = weakref.WeakSet()
        self.dtls: weakref.WeakSet[DtlsLoad] = weakref.WeakSet()

    def collect(self) -> Iterator[Metric]:
        resolvers = list(self.resolvers)
        hits = sum(r.cache.hits for r in resolvers)
        misses = sum(r.cache.misses for r in resolvers)
        yield CounterMetricFamily(
            "corem_resolver_cache_hits", "Resolver lookups answered by the cache.", value=hits
        )
        yield CounterMetricFamily(
            "corem_resolver_cache_misses", "Resolver lookups that asked Redis.", value=misses
        )
        yield GaugeMetricFamily(
            "corem_resolver_cache_hit_ratio",
            "hits / (hits + misses) since start (0 before any lookup).",
            value=hits / (hits + misses) if hits + misses else 0.0,
        )
        yield GaugeMetricFamily(
            "corem_resolver_cache_entries",
            "Entries in the resolver cache (positive and negative).",
            value=sum(len(r.cache) for r in resolvers),
        )
        live = GaugeMetricFamily(
            "corem_sessions_live",
            "Authenticated sessions registered with the session hub now.",
            labels=["transport", "tenant"],
        )
        tally: _Tally[tuple[str, str]] = _Tally()
        for hub in list(self.hubs):
            for s in hub.registry.sessions():
                tally[(_transport(s.transport), tenant_label(s.identity.tenant_id))] += 1
        for (transport, tenant), n in sorted(tally.items()):
            live.add_metric([transport, tenant], n)
        yield live
        throttles = list(self.throttles)
        yield CounterMetricFamily(
            "corem_auth_throttle_blocks",
            "Source addresses blocked by the failed-authentication throttle (each block).",
            value=sum(t.blocks for t in throttles),
        )
        yield GaugeMetricFamily(
            "corem_auth_throttle_sources",
            "Source addresses the throttle currently tracks (bounded by limits.auth_max_sources).",
            value=sum(len(t) for t in throttles),
        )
        servers = list(self.dtls)
        yield GaugeMetricFamily(
            "corem_dtls_pending_handshakes",
            "DTLS handshakes in progress (cookie verified, not complete; bounded by "
            "coap.max_pending_handshakes).",
            value=sum(s.pending_handshakes for s in servers),
        )
        yield GaugeMetricFamily(
            "corem_dtls_peers",
            "DTLS peers with state: handshakes in progress and established sessions.",
            value=sum(len(s) for s in servers),
        )


_node_collector = _NodeCollector()


class DtlsLoad(Protocol):
    """What a DTLS server tells the metrics (``adapters/dtls/server.DtlsServer``)."""

    @property
    def pending_handshakes(self) -> int: ...

    def __len__(self) -> int: ...


REGISTRY.register(_node_collector)


def track(
    *,
    resolver: Resolver | None = None,
    hub: SessionHub | None = None,
    throttle: AuthThrottle | None = None,
    dtls: DtlsLoad | None = None,
) -> None:
    """Report this resolver's cache, hub's live sessions, throttle's blocks (app.Node does it),
    a DTLS server's handshakes and peers (the CoAP adapter does)."""
    if resolver is not None:
        _node_collector.resolvers.add(resolver)
    if hub is not None:
        _node_collector.hubs.add(hub)
    if throttle is not None:
        _node_collector.throttles.add(throttle)
    if dtls is not None:
        _node_collector.dtls.add(dtls)


def untrack(
    *,
    resolver: Resolver | None = None,
    hub: SessionHub | None = None,
    throttle: AuthThrottle | None = None,
) -> None:
    if resolver is not None:
        _node_collector.resolvers.discard(resolver)
    if hub is not None:
        _node_collector.hubs.discard(hub)
    if throttle is not None:
        _node_collector.throttles.discard(throttle)


def exposition() -> bytes:
    """The text format for ``GET /metrics``."""
    return generate_latest(REGISTRY)


def _total(metric: Counter | Histogram, sample_name: str, **match: str) -> float:
    total = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == sample_name and all(
                sample.labels.get(k) == v for k, v in match.items()
            ):
                total += sample.value
    return total


def key_figures() -> dict[str, float]:
    """The process's running totals the console's health charts are drawn from (each node
    shares them through the sessions index heartbeat; rates come from two readings)."""
    return {
        "uplinks_total": _total(UPLINKS, "corem_uplinks_total", outcome="ok"),
        "auth_failures_total": _total(AUTH_FAILURES, "corem_auth_failures_total"),
        "revocations_total": _total(
            REVOKE_TO_DISCONNECT_SECONDS, "corem_revoke_to_disconnect_seconds_count"
        ),
        "revocation_latency_sum_s": _total(
            REVOKE_TO_DISCONNECT_SECONDS, "corem_revoke_to_disconnect_seconds_sum"
        ),
    }
