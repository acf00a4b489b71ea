"""Configuration: YAML file, then ``COREM_...`` environment overrides, validated at start.

Every leaf ``section.key`` can be overridden by ``COREM_SECTION_KEY`` (upper case).
Errors name the key and where the bad value came from; secret values are never
echoed. Secrets (the PSK key-encryption keys) are read only from the environment
or a file named in the config, never from the YAML itself.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from corem_ingress.core import psk
from corem_ingress.core.proxy_protocol import ProxyMode
from corem_ingress.core.trusted_proxies import TrustedProxies
from corem_ingress.store import connection

if TYPE_CHECKING:
    from corem_ingress.lwm2m.queue import QueuePolicy


class ConfigError(Exception):
    """A configuration problem; the message names the key."""


@dataclass
class RedisConfig:
    #: redis://, rediss://, unix://, redis+sentinel://h:p[,h:p]/service[/db] or
    #: redis+cluster://h:p[,h:p] URL (see docs/deploy.md). Empty: start a private
    #: redis-server child (dev).
    url: str = ""
    #: Prefix of every key and channel (the registry's hash tag is ``{prefix}``).
    key_prefix: str = "corem"
    #: The redis-server binary used for the embedded Redis.
    embedded_binary: str = "redis-server"
    #: Connect and command timeout; past it a lookup fails closed (UNAVAILABLE). Also the
    #: bound of every Redis wait on a device's request path (lookup, append): the device
    #: gets its "try later" (503, CONNACK 3, 5.03) within it.
    socket_timeout_s: float = 2.0
    #: File holding the URL instead (one line; when the URL carries a password, keep it in a
    #: secret file rather than in this YAML or the environment). Replaces ``url`` when set.
    url_file: str = ""
    #: Connections per pool. The node keeps one pool per class of traffic -- credential
    #: lookups, uplink appends, background work (bus, limits, LwM2M) -- so that none starves
    #: another; on a cluster, per master.
    pool_max_connections: int = 32
    #: Connections of the admin API's (registry) pool, kept apart from the device traffic.
    admin_pool_max_connections: int = 16
    #: How long a command waits for a free pooled connection before it fails as UNAVAILABLE.
    pool_wait_s: float = 2.0
    #: The same for the admin API's pool: operators' requests queue longer than devices'.
    admin_pool_wait_s: float = 10.0


@dataclass
class ResolverConfig:
    #: How long a positive lookup is trusted without asking Redis (the bus evicts sooner).
    cache_ttl_s: float = 30.0
    #: How long "unknown credential" is remembered (0: never).
    negative_ttl_s: float = 2.0
    #: LRU bound of the in-process cache.
    cache_max_entries: int = 200_000
    #: Outage policy after a revocation-bus gap. 0: fail closed -- the cache is dropped and
    #: only Redis vouches again. N > 0: credentials verified within N seconds before the gap
    #: keep authenticating while Redis cannot be asked (Redis is tried first, always), and
    #: everything is re-validated once it answers. See docs/reliability.md.
    outage_grace_s: float = 0.0


@dataclass
class CredentialsConfig:
    #: How long a rotated API key keeps working by default.
    api_key_overlap_s: float = 86_400.0
    #: The largest overlap a caller may ask for.
    api_key_overlap_max_s: float = 7 * 86_400.0
    #: Shortest PSK accepted, and the length of generated PSKs (16..64). The platform's rule is
    #: 32; lower it to 16 only for fleets on stock tinydtls, which cannot use longer PSKs.
    psk_min_bytes: int = 32
    #: File with the PSK key-encryption keys (``kid:base64`` lines, first active).
    #: The keys themselves may also come from the COREM_PSK_KEK environment variable.
    psk_kek_file: str = ""


@dataclass
class HealthConfig:
    #: /healthz (liveness), /readyz (readiness, with the "degraded" field) listen here.
    host: str = "127.0.0.1"
    #: Port of /healthz, /readyz (and /metrics).
    port: int = 9100
    #: Seconds between the node's checks of its dependencies (Redis answers a credential
    #: lookup within redis.socket_timeout_s, the bus is subscribed);
    #: /readyz and the corem_degraded metric report the last result.
    check_interval_s: float = 1.0
    #: false (default): a shared Redis's outage makes every node *degraded*, not unready --
    #: devices keep reaching a node and get 503/CONNACK 3/5.03 with a retry hint instead of
    #: silence (docs/operations.md). true: /readyz also fails while Redis or the bus is down.
    readiness_requires_redis: bool = False


@dataclass
class HttpConfig:
    """Device uplink + admin API (aiohttp)."""

    #: Serve HTTP on this node (device uplink, and the admin API unless admin_mode is off).
    enabled: bool = True
    #: Address of the device listener (0.0.0.0 in containers; put a TLS proxy in front).
    host: str = "127.0.0.1"
    #: Port of the device listener (and of the admin API when it is shared).
    port: int = 8080
    #: Largest request body accepted (413 beyond).
    max_body_bytes: int = 64 * 1024
    #: 0: the admin API shares the device listener; otherwise its own listener on this port.
    admin_port: int = 0
    #: Address of the separate admin listener (when admin_port or admin_mode asks for one).
    admin_host: str = "127.0.0.1"
    #: "auto": its own listener when admin_port is set, else shared with the device listener;
    #: "shared"; "separate" (admin_port 0: an OS-chosen port); "off": no admin API on this node.
    admin_mode: str = "auto"
    #: File of operator tokens: one ``tenant_id:sha256hex[:name]`` per line (hashes, not tokens;
    #: ``#`` comments). The environment variable COREM_HTTP_ADMIN_TOKENS may hold more lines
    #: of the same form; both sources are used. See docs/http-api.md.
    admin_tokens_file: str = ""
    #: Seconds a device is told to wait (``Retry-After``) after a 503.
    retry_after_s: int = 1
    #: Serve HTTPS with this certificate chain (PEM) and tls_key: both listeners, TLS >= 1.2,
    #: explicit ciphers, HSTS on the admin API. Empty: plain HTTP (dev, or behind a TLS proxy).
    tls_cert: str = ""
    #: The private key (PEM) of tls_cert.
    tls_key: str = ""
    #: PROXY protocol (v1/v2) from ``proxy.trusted_cidrs``: off, optional or required (a trusted
    #: proxy's connection without a header is refused). A header from anyone else: refused.
    proxy_protocol: str = "off"
    #: Take the client address from ``X-Forwarded-For`` when the peer is a trusted proxy
    #: (an HTTP reverse proxy that terminates TLS); never from anyone else.
    trust_forwarded_for: bool = False

    def validate(self) -> None:
        """Errors name the key (``http.<key>``); called when the listener is built."""
        _check(0 <= self.port < 65536, "http.port", "must be 0..65535 (0: any free port)")
        _check(
            0 <= self.admin_port < 65536, "http.admin_port", "must be 0..65535 (0: see admin_mode)"
        )
        _check(
            self.admin_mode in ("auto", "shared", "separate", "off"),
            "http.admin_mode",
            "must be auto, shared, separate or off",
        )
        _check(
            1024 <= self.max_body_bytes <= 16 * 1024 * 1024,
            "http.max_body_bytes",
            "must be 1024..16777216 bytes",
        )
        _check(0 <= self.retry_after_s <= 3600, "http.retry_after_s", "must be 0..3600")
        _check(
            bool(self.tls_cert) == bool(self.tls_key),
            "http.tls_cert",
            "http.tls_cert and http.tls_key must be set together",
        )
        _check_proxy_mode(self.proxy_protocol, "http.proxy_protocol")


@dataclass
class MqttConfig:
    """MQTT 3.1.1 and 5.0 over TLS (our sans-I/O core over pyOpenSSL memory BIOs; docs/mqtt.md)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8883
    #: "required": no client certificate, no handshake. "optional": else an API key password.
    client_auth: str = "required"
    server_cert: str = "certs-dev/server.pem"
    server_key: str = "certs-dev/server.key"
    #: CA bundles that device certificates must chain to (comma-separated in env).
    client_ca_files: list[str] = field(default_factory=lambda: ["certs-dev/ca.pem"])
    #: Accept a self-signed device certificate (no CA) in the handshake; its fingerprint must
    #: still be registered (``corem-ingress certs register``), like every certificate's.
    allow_self_signed: bool = False
    #: Longest certificate chain accepted (leaf + intermediates).
    verify_depth: int = 4
    #: Largest MQTT packet accepted, fixed header included; larger closes that connection.
    max_packet_size: int = 65_536
    #: Seconds from TCP accept (TLS handshake included) to a complete CONNECT.
    connect_timeout_s: float = 10.0
    #: Keep-alive enforced when a client asks for 0 or more (closed after 1.5x without data).
    max_keepalive_s: int = 1200
    #: Unacknowledged QoS 1 messages per connection, each way (uplinks awaiting their
    #: Redis append pause reading; downlinks beyond it are not delivered); also the QoS 2
    #: uplinks that may await PUBREL (a client past it is disconnected). 20: paho-mqtt's and
    #: mosquitto's own in-flight default, so their clients never cross it.
    max_inflight: int = 20
    #: Topic filters one connection may hold; SUBSCRIBE past it is refused per filter
    #: (SUBACK 0x80). Bounds the work of matching each downlink.
    max_subscriptions: int = 32
    #: listen() backlog.
    backlog: int = 1024
    #: Store a device's will as an uplink when its connection ends without DISCONNECT (only
    #: a will on its own devices/{id}/up/{kind} topic; not after a revocation). Wills and
    #: retained messages are never routed to other devices: this broker is ingress only.
    wills_as_uplinks: bool = False
    #: PROXY protocol (v1/v2) from ``proxy.trusted_cidrs``: off, optional or required (a trusted
    #: proxy's connection without a header is refused). A header from anyone else: refused.
    proxy_protocol: str = "off"
    #: Longest a persistent session (its subscriptions and queued QoS 1 downlinks) is kept
    #: after its connection ends: an MQTT 5 Session Expiry Interval above it is clamped (and
    #: the CONNACK says so); a 3.1.1 CleanSession 0 session gets exactly this.
    session_expiry_max_s: int = 86_400

    def validate(self) -> None:
        """Errors name the key (``mqtt.<key>``); called when the listener is built."""
        _check(
            self.client_auth in ("required", "optional"),
            "mqtt.client_auth",
            "must be required or optional",
        )
        _check(0 <= self.port < 65536, "mqtt.port", "must be 0..65535 (0: any free port)")
        _check(bool(self.server_cert), "mqtt.server_cert", "must name a PEM file")
        _check(bool(self.server_key), "mqtt.server_key", "must name a PEM file")
        _check(
            bool(self.client_ca_files) or self.allow_self_signed,
            "mqtt.client_ca_files",
            "must name at least one CA bundle (or set mqtt.allow_self_signed)",
        )
        _check(1 <= self.verify_depth <= 10, "mqtt.verify_depth", "must be 1..10")
        _check(
            128 <= self.max_packet_size <= 268_435_460,
            "mqtt.max_packet_size",
            "must be 128..268435460 bytes",
        )
        _check(self.connect_timeout_s > 0, "mqtt.connect_timeout_s", "must be > 0")
        _check(1 <= self.max_keepalive_s <= 65535, "mqtt.max_keepalive_s", "must be 1..65535")
        _check(1 <= self.max_inflight <= 65535, "mqtt.max_inflight", "must be 1..65535")
        _check(1 <= self.max_subscriptions <= 1024, "mqtt.max_subscriptions", "must be 1..1024")
        _check(self.backlog >= 1, "mqtt.backlog", "must be >= 1")
        _check(
            1 <= self.session_expiry_max_s <= 4_294_967_294,
            "mqtt.session_expiry_max_s",
            "must be 1..4294967294",
        )
        _check_proxy_mode(self.proxy_protocol, "mqtt.proxy_protocol")


@dataclass
class ConnectionIdConfig:
    """DTLS 1.2 Connection ID (RFC 9146): sessions that survive NAT rebinding."""

    #: Answer a client's ``connection_id`` extension: its session then follows it to a new
    #: address or port (after an authenticated, newer record) and to another node.
    enabled: bool = True
    #: Bytes of the CIDs we issue, which clients put in their records: 0 asks for none (we
    #: still send a client's CID, but its address can no longer change), else 4..16 (the
    #: first 2 name this node, for cross-node forwarding).
    length: int = 8
    #: The address other nodes forward this node's CID records to (its DTLS port, or with
    #: ``reuse_port`` a UDP port of this process's own; empty: coap.host). Needed when
    #: coap.host is a wildcard such as 0.0.0.0.
    advertise_host: str = ""

    def validate(self) -> None:
        _check(
            self.length == 0 or 4 <= self.length <= 16,
            "coap.connection_id.length",
            "must be 0 (ask for no CID) or 4..16",
        )


@dataclass
class ResumptionConfig:
    """DTLS 1.2 session resumption (RFC 5246 session ids), shared by the nodes in Redis."""

    #: Full handshakes issue a session id; a device that lost its session (reboot, idle
    #: close) resumes it with an abbreviated handshake on any node, after its credential is
    #: re-checked with the resolver.
    enabled: bool = True
    #: How long a session can be resumed after its full handshake (its Redis TTL).
    lifetime_s: int = 86_400
    #: Sessions are sealed under a key that changes this often (shared by the nodes in
    #: Redis; an old key lives as long as sessions sealed under it).
    rotation_s: int = 3_600

    def validate(self) -> None:
        _check(self.lifetime_s >= 1, "coap.resumption.lifetime_s", "must be >= 1")
        _check(self.rotation_s >= 60, "coap.resumption.rotation_s", "must be >= 60")


@dataclass
class CoapConfig:
    """CoAP and LwM2M over DTLS 1.2 (our pyOpenSSL memory-BIO server)."""

    #: Serve CoAP (and LwM2M) over DTLS on this node.
    enabled: bool = True
    #: UDP address of the DTLS listener (PSK and certificates on one port).
    host: str = "127.0.0.1"
    #: UDP port (5684 is coaps).
    port: int = 5684
    #: The server's certificate chain (PEM); an EC key enables ECDHE-ECDSA (LwM2M).
    server_cert: str = "certs-dev/server.pem"
    #: The server's private key (PEM file, never in Redis or logs).
    server_key: str = "certs-dev/server.key"
    #: CA bundles device certificates must chain to (self-signed: by registered fingerprint).
    client_ca_files: list[str] = field(default_factory=lambda: ["certs-dev/ca.pem"])
    #: Link MTU (bytes, IP+UDP included): each datagram sent carries whole DTLS records.
    mtu: int = 1280
    #: A DTLS handshake must complete within this many seconds (half-open state dropped).
    handshake_timeout_s: float = 10.0
    #: An established DTLS session with no datagram for this long is closed.
    idle_timeout_s: float = 300.0
    #: Handshaking + established DTLS sessions on this listener.
    max_sessions: int = 10_000
    #: New handshakes per second per source IP (after the cookie exchange), and burst.
    handshake_rate_per_s: float = 10.0
    #: Burst of handshakes a source may start at once before the rate applies.
    handshake_burst: int = 20
    #: DTLS handshakes in progress (cookie verified, not complete) at once; a new one
    #: beyond it is ignored (the client retries) until one completes or times out.
    max_pending_handshakes: int = 1000
    #: DTLS handshakes in progress from one source IP at once (0: no per-source cap).
    max_pending_handshakes_per_source: int = 20
    #: CoAP ACK_TIMEOUT and MAX_RETRANSMIT for our confirmable messages (RFC 7252 4.8).
    ack_timeout_s: float = 2.0
    #: Retransmissions of a confirmable message before giving up.
    max_retransmit: int = 4
    #: Largest uplink body (block-wise assembled); more: 4.13 Request Entity Too Large.
    max_body_bytes: int = 64 * 1024
    #: Block2 size for large notifications: 16..1024 (a power of two).
    block_size: int = 512
    #: Max-Age (seconds) on 5.03 when the uplink store is unavailable.
    unavailable_max_age_s: int = 5
    connection_id: ConnectionIdConfig = field(default_factory=ConnectionIdConfig)
    resumption: ResumptionConfig = field(default_factory=ResumptionConfig)
    #: Once a DTLS handshake completes, free its OpenSSL object and carry the session on
    #: the broker's own record layer (keys from the master secret): ~4 KB per idle session
    #: instead of ~70 KB.
    detach_openssl: bool = True

    def validate(self) -> None:
        """Called by the CoAP adapter's build(); errors name the key."""
        self.connection_id.validate()
        self.resumption.validate()
        _check(0 <= self.port < 65536, "coap.port", "must be 0..65535 (0: any free port)")
        _check(256 <= self.mtu <= 65_507, "coap.mtu", "must be 256..65507")
        _check(self.handshake_timeout_s > 0, "coap.handshake_timeout_s", "must be > 0")
        _check(self.idle_timeout_s > 0, "coap.idle_timeout_s", "must be > 0")
        _check(self.max_sessions >= 1, "coap.max_sessions", "must be >= 1")
        _check(self.handshake_rate_per_s >= 0, "coap.handshake_rate_per_s", "must be >= 0")
        _check(self.handshake_burst >= 1, "coap.handshake_burst", "must be >= 1")
        _check(self.max_pending_handshakes >= 1, "coap.max_pending_handshakes", "must be >= 1")
        _check(
            self.max_pending_handshakes_per_source >= 0,
            "coap.max_pending_handshakes_per_source",
            "must be >= 0 (0: no per-source cap)",
        )
        _check(self.ack_timeout_s > 0, "coap.ack_timeout_s", "must be > 0")
        _check(0 <= self.max_retransmit <= 10, "coap.max_retransmit", "must be 0..10")
        _check(self.max_body_bytes >= 1, "coap.max_body_bytes", "must be >= 1")
        _check(
            self.block_size in (16, 32, 64, 128, 256, 512, 1024)
            and self.block_size <= self.mtu - 128,
            "coap.block_size",
            "must be a power of two in 16..1024, at least 128 below coap.mtu",
        )
        _check(self.unavailable_max_age_s >= 0, "coap.unavailable_max_age_s", "must be >= 0")


@dataclass
class Lwm2mConfig:
    """LwM2M 1.1 server (1.0 clients accepted) on the CoAP/DTLS listener (docs/lwm2m.md)."""

    #: Mount /rd and /dp on the CoAP listener (needs coap.enabled).
    enabled: bool = True
    #: What a registration's endpoint name must equal for the device the DTLS credential
    #: resolved to: hardware_id or device_id. Otherwise 4.03 and nothing is stored.
    endpoint_binding: str = "hardware_id"
    #: DEV ONLY: accept LwM2M without DTLS (NoSec) on a separate plain-UDP port, for the
    #: devices of nosec_tenant (the endpoint name selects the device). Off in production.
    allow_nosec: bool = False
    #: The NoSec (coap://) listener's address, only with allow_nosec (port 0: any free port).
    nosec_host: str = "127.0.0.1"
    nosec_port: int = 5683
    #: The tenant whose devices may register with NoSec (required with allow_nosec).
    nosec_tenant: str = ""
    #: Accepted registration lifetimes (seconds); a Register/Update outside them gets 4.00.
    min_lifetime_s: int = 1
    #: Longest accepted registration lifetime (seconds).
    max_lifetime_s: int = 2**32 - 1
    #: Seconds a registration is kept in Redis past its lifetime (then Redis drops it).
    expiry_grace_s: int = 30
    #: Object paths observed after every registration (those the client announced).
    observe_paths: list[str] = field(default_factory=lambda: ["/3/0", "/3303"])
    #: Per-tenant override of observe_paths: tenant id -> comma-separated paths ("" : none).
    tenant_observe_paths: dict[str, str] = field(default_factory=dict)
    #: Write-Attributes sent after every Register, before the observe paths are observed:
    #: "PATH?attr=value&..." (pmin, pmax, gt, lt, st, epmin, epmax), e.g. "/3/0?pmax=60".
    #: Only those whose object the client announced.
    default_attributes: list[str] = field(default_factory=list)
    #: Per-tenant override of default_attributes: tenant id -> space-separated entries
    #: ("/3/0?pmax=60 /3303/0/5700?st=0.5"; "" : none).
    tenant_default_attributes: dict[str, str] = field(default_factory=dict)
    #: How long an operator's Read/Write/Execute/... waits for the device's answer.
    request_timeout_s: float = 10.0
    #: Queue mode: requests a sleeping device may have waiting (one more: 429).
    queue_max_per_device: int = 16
    #: Queue mode: deadline of a queued request when the operator gives none (seconds).
    queue_deadline_s: float = 3600.0
    #: Queue mode: the longest deadline an operator may give (seconds).
    queue_max_deadline_s: float = 86400.0
    #: Queue mode: a device counts as awake this long after each request it sends (seconds;
    #: CoAP MAX_TRANSMIT_WAIT, 93 s, as Leshan).
    queue_awake_s: float = 93.0
    #: Firmware update: the largest image an operator may upload (bytes).
    firmware_max_bytes: int = 8 * 1024 * 1024
    #: Firmware update: block size of a push (Block1) and the largest of a pull (Block2).
    firmware_block_size: int = 512
    #: Firmware update (pull): the host devices reach this node's DTLS port at, in the
    #: Package URI given to them ("": coap.host).
    firmware_uri_host: str = ""

    def queue_policy(self) -> QueuePolicy:
        from corem_ingress.lwm2m.queue import QueuePolicy

        return QueuePolicy(
            max_per_device=self.queue_max_per_device,
            default_deadline_s=self.queue_deadline_s,
            max_deadline_s=self.queue_max_deadline_s,
            awake_s=self.queue_awake_s,
        )

    #: A folder of OMA DDF XML object definitions (*.xml) added to the shipped objects
    #: 0-7 and 3303 ("" : only those); one there may redefine a shipped object.
    models_dir: str = ""

    def paths_for(self, tenant_id: str) -> list[str]:
        """The paths to observe for a tenant's devices."""
        override = self.tenant_observe_paths.get(tenant_id)
        if override is None:
            return list(self.observe_paths)
        return [p.strip() for p in override.split(",") if p.strip()]

    def attributes_for(self, tenant_id: str) -> list[str]:
        """The default attributes (``PATH?query`` entries) for a tenant's devices."""
        override = self.tenant_default_attributes.get(tenant_id)
        if override is None:
            return list(self.default_attributes)
        return override.split()

    def validate(self) -> None:
        _check(
            self.endpoint_binding in ("hardware_id", "device_id"),
            "lwm2m.endpoint_binding",
            "must be hardware_id or device_id",
        )
        _check(
            1 <= self.min_lifetime_s <= self.max_lifetime_s,
            "lwm2m.min_lifetime_s",
            "need 1 <= min_lifetime_s <= max_lifetime_s",
        )
        _check(self.expiry_grace_s >= 0, "lwm2m.expiry_grace_s", "must be >= 0")
        _check(self.request_timeout_s > 0, "lwm2m.request_timeout_s", "must be > 0")
        _check(self.queue_max_per_device >= 1, "lwm2m.queue_max_per_device", "must be >= 1")
        _check(
            0 < self.queue_deadline_s <= self.queue_max_deadline_s,
            "lwm2m.queue_deadline_s",
            "need 0 < queue_deadline_s <= queue_max_deadline_s",
        )
        _check(self.queue_awake_s > 0, "lwm2m.queue_awake_s", "must be > 0")
        _check(self.firmware_max_bytes >= 1, "lwm2m.firmware_max_bytes", "must be >= 1")
        _check(
            self.firmware_block_size in (16, 32, 64, 128, 256, 512, 1024),
            "lwm2m.firmware_block_size",
            "must be a power of two in 16..1024",
        )
        _check(0 <= self.nosec_port < 65536, "lwm2m.nosec_port", "must be 0..65535")
        _check(
            not self.allow_nosec or bool(self.nosec_tenant),
            "lwm2m.nosec_tenant",
            "is required with lwm2m.allow_nosec",
        )
        from corem_ingress.core.errors import InvalidArgument
        from corem_ingress.lwm2m.model import Lwm2mPath

        for tenant in ["", *self.tenant_observe_paths]:
            for text in self.paths_for(tenant) if tenant else self.observe_paths:
                try:
                    ok = Lwm2mPath.parse(text).level >= 1
                except InvalidArgument:
                    ok = False
                key = f"lwm2m.tenant_observe_paths.{tenant}" if tenant else "lwm2m.observe_paths"
                _check(ok, key, f"{text!r} is not an LwM2M object/instance/resource path")
        from corem_ingress.lwm2m.operations import AttributeSpec

        for tenant in ["", *self.tenant_default_attributes]:
            for text in self.attributes_for(tenant) if tenant else self.default_attributes:
                key = (
                    f"lwm2m.tenant_default_attributes.{tenant}"
                    if tenant
                    else "lwm2m.default_attributes"
                )
                try:
                    AttributeSpec.parse(text)
                except InvalidArgument as exc:
                    _check(False, key, exc.message)
        if self.models_dir:
            from corem_ingress.lwm2m.objects import load_model

            try:
                load_model(self.models_dir)
            except InvalidArgument as exc:
                _check(False, "lwm2m.models_dir", exc.message)


@dataclass
class LimitsConfig:
    """Abuse limits; each refusal is protocol-appropriate and counted (docs/operations.md)."""

    #: Failed authentications from one source IP within auth_fail_window_s that block it
    #: (0: no throttling).
    auth_fail_max: int = 10
    #: The window in which failed authentications of one source IP are counted.
    auth_fail_window_s: float = 60.0
    #: How long a throttled source IP is refused before any authentication work.
    auth_block_s: float = 300.0
    #: Source IPs the throttle tracks at most (least recently seen forgotten first).
    auth_max_sources: int = 100_000
    #: Live connections (MQTT, DTLS sessions) per tenant on this node (0: unlimited).
    per_tenant_max_connections: int = 0
    #: Uplink messages per second per device on this node, token bucket (0: unlimited).
    per_device_msgs_per_s: float = 0.0
    #: Burst of the per-device token bucket (messages accepted at once after idling).
    per_device_burst: int = 20
    #: Devices the rate limiter tracks at most (least recently seen forgotten first).
    rate_limit_max_devices: int = 200_000
    #: Seconds between the nodes sharing, through Redis, their per-tenant connection counts
    #: and the auth blocks they started, so both limits hold for the whole deployment
    #: (0: each node alone). A node that stops sharing drops out after 3 intervals.
    sync_interval_s: float = 1.0
    #: Open files (RLIMIT_NOFILE) the node asks for at start; each MQTT/HTTP connection
    #: takes one. 0: raise the soft limit to the hard limit. Above the hard limit the node
    #: also tries to raise that (needs CAP_SYS_RESOURCE) and logs what it got.
    open_files: int = 0

    def validate(self) -> None:
        _check(self.open_files >= 0, "limits.open_files", "must be >= 0 (0: the hard limit)")
        _check(self.auth_fail_max >= 0, "limits.auth_fail_max", "must be >= 0 (0: off)")
        _check(self.auth_fail_window_s > 0, "limits.auth_fail_window_s", "must be > 0")
        _check(self.auth_block_s >= 0, "limits.auth_block_s", "must be >= 0")
        _check(self.auth_max_sources >= 1, "limits.auth_max_sources", "must be >= 1")
        _check(
            self.per_tenant_max_connections >= 0,
            "limits.per_tenant_max_connections",
            "must be >= 0 (0: unlimited)",
        )
        _check(
            self.per_device_msgs_per_s >= 0,
            "limits.per_device_msgs_per_s",
            "must be >= 0 (0: unlimited)",
        )
        _check(self.per_device_burst >= 1, "limits.per_device_burst", "must be >= 1")
        _check(
            self.sync_interval_s == 0 or 0.05 <= self.sync_interval_s <= 60,
            "limits.sync_interval_s",
            "must be 0 (not shared) or 0.05..60",
        )
        _check(self.rate_limit_max_devices >= 1, "limits.rate_limit_max_devices", "must be >= 1")


@dataclass
class ProvisioningConfig:
    """Devices that enrol themselves (docs/provisioning.md): provisioning by claim."""

    #: Provisioning requests per minute per claim, all nodes together (0: unlimited).
    claim_rate_per_minute: int = 120
    #: Provisioning requests per minute per tenant, all nodes together (0: unlimited).
    tenant_rate_per_minute: int = 1200
    #: The LwM2M server URI the bootstrap server writes to devices (empty: this node's
    #: ``coaps://<coap.host>:<coap port>``; behind a load balancer, its address).
    bootstrap_server_uri: str = ""
    #: The registration lifetime the bootstrap server writes (Server object /1/x/1).
    bootstrap_lifetime_s: int = 300

    def validate(self) -> None:
        for key in ("claim_rate_per_minute", "tenant_rate_per_minute"):
            _check(getattr(self, key) >= 0, f"provisioning.{key}", "must be >= 0 (0: unlimited)")
        _check(
            self.bootstrap_server_uri == "" or self.bootstrap_server_uri.startswith("coaps://"),
            "provisioning.bootstrap_server_uri",
            "must be a coaps:// URI (or empty)",
        )
        _check(self.bootstrap_lifetime_s >= 1, "provisioning.bootstrap_lifetime_s", "must be >= 1")


@dataclass
class DownlinksConfig:
    """Downlinks to devices (docs/mqtt.md, "Downlinks"): the offline queue, the send answer."""

    #: Queued downlinks kept per device with a persistent session; the oldest is dropped
    #: (counted in ``corem_downlink_drops_total{reason="queue_full"}``) to make room.
    queue_max: int = 100
    #: How long a send waits for the node holding the device's session to say it delivered
    #: (else the answer is ``queued`` for a persistent session, ``dropped`` otherwise).
    reply_wait_s: float = 2.0
    #: How long a CoAP device's queue is kept after its DTLS session ends (it observed
    #: ``/down`` once: downlinks sent while it sleeps wait for its next Observe or GET).
    coap_session_expiry_s: int = 86_400

    def validate(self) -> None:
        _check(1 <= self.queue_max <= 10_000, "downlinks.queue_max", "must be 1..10000")
        _check(0 < self.reply_wait_s <= 30, "downlinks.reply_wait_s", "must be > 0 and <= 30")
        _check(
            1 <= self.coap_session_expiry_s <= 4_294_967_294,
            "downlinks.coap_session_expiry_s",
            "must be 1..4294967294",
        )


@dataclass
class ProxyConfig:
    """Load balancers in front of the listeners (docs/operations.md, "Behind a load balancer")."""

    #: Addresses (CIDRs) of our load balancers: the only peers whose PROXY header (and, with
    #: http.trust_forwarded_for, X-Forwarded-For) is believed. Their own address is never
    #: throttled (every client behind it would share the block).
    trusted_cidrs: list[str] = field(default_factory=list)

    def validate(self) -> None:
        try:
            TrustedProxies(self.trusted_cidrs)
        except ValueError as exc:
            raise ConfigError(f"config: proxy.trusted_cidrs: {exc}") from None


REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")


@dataclass
class TrustConfig:
    """Tenant trust anchors (docs/operations.md, "Tenant CAs")."""

    #: CA files registered as trust anchors of a tenant at every ``serve`` start, each as
    #: ``tenant:path`` (comma-separated in env; a file may hold several CAs). Idempotent;
    #: a CA removed since is added again. The dev config registers the dev CA for ``acme``.
    bootstrap_cas: list[str] = field(default_factory=list)

    def entries(self) -> list[tuple[str, str]]:
        """(tenant, path) of each ``bootstrap_cas`` entry."""
        out = []
        for entry in self.bootstrap_cas:
            tenant, _, path = entry.partition(":")
            out.append((tenant.strip(), path.strip()))
        return out

    def validate(self) -> None:
        from corem_ingress.core.errors import InvalidArgument
        from corem_ingress.core.identity import check_tenant_id

        for tenant, path in self.entries():
            try:
                check_tenant_id(tenant)
            except InvalidArgument:
                raise ConfigError(
                    "config: trust.bootstrap_cas: each entry is tenant:path (a valid tenant id)"
                ) from None
            _check(bool(path), "trust.bootstrap_cas", "each entry is tenant:path (path missing)")


@dataclass
class SessionsConfig:
    """The live-sessions index every node keeps in Redis (docs/console.md, docs/redis-keys.md)."""

    #: Seconds between a node's heartbeats to the sessions index (its entries expire after
    #: 3 intervals without one: a node that dies drops out). 0: no index (the console's and
    #: ``GET /api/v1/sessions``' view of live sessions is then empty).
    index_interval_s: float = 2.0
    #: At most this many sessions of one node are listed in the index (the rest are live but
    #: not shown; a warning is logged once).
    index_max_per_node: int = 200_000

    def validate(self) -> None:
        _check(
            self.index_interval_s == 0 or 0.05 <= self.index_interval_s <= 60,
            "sessions.index_interval_s",
            "must be 0 (no index) or 0.05..60",
        )
        _check(self.index_max_per_node >= 1, "sessions.index_max_per_node", "must be >= 1")


@dataclass
class ConsoleConfig:
    """The operator console at ``/console`` on the admin listener (docs/console.md)."""

    #: Serve the console (it needs the admin API: ``http.admin_tokens_file`` or
    #: ``COREM_HTTP_ADMIN_TOKENS``).
    enabled: bool = True
    #: Live uplink tails (``GET /api/v1/uplinks/stream``) open at once on this node; more get 503.
    max_streams: int = 32

    def validate(self) -> None:
        _check(1 <= self.max_streams <= 1000, "console.max_streams", "must be 1..1000")


@dataclass
class LoggingConfig:
    #: "console" (readable, dev) or "json" (production).
    format: str = "json"
    #: debug, info, warning or error.
    level: str = "info"


@dataclass
class Config:
    #: Identifies this broker node in logs and in Redis (session ownership).
    node_id: str = ""
    #: Where runtime files go (e.g. the embedded Redis URL for the CLI).
    state_dir: str = ".corem"
    #: Graceful shutdown: seconds to stop listeners, tell devices to go and finish appends.
    shutdown_deadline_s: float = 10.0
    #: The event loop: ``auto`` (uvloop when installed: the ``fast`` extra), ``asyncio``
    #: or ``uvloop`` (required). The startup log says which one runs.
    event_loop: str = "auto"
    #: Bind the device listeners (MQTT, CoAP/DTLS, HTTP and its admin listener, LwM2M NoSec)
    #: with SO_REUSEPORT, so that several broker processes on one host share their ports
    #: and the kernel spreads connections (UDP: by address and port) over them. Each process
    #: still needs its own ``health.port``. See docs/operations.md, "Several broker processes
    #: on one port".
    reuse_port: bool = False
    redis: RedisConfig = field(default_factory=RedisConfig)
    resolver: ResolverConfig = field(default_factory=ResolverConfig)
    credentials: CredentialsConfig = field(default_factory=CredentialsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    coap: CoapConfig = field(default_factory=CoapConfig)
    lwm2m: Lwm2mConfig = field(default_factory=Lwm2mConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    provisioning: ProvisioningConfig = field(default_factory=ProvisioningConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    downlinks: DownlinksConfig = field(default_factory=DownlinksConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)

    def validate(self) -> None:
        _check(0 <= self.health.port < 65536, "health.port", "must be 0..65535 (0: any free port)")
        _check(self.shutdown_deadline_s > 0, "shutdown_deadline_s", "must be > 0")
        _check(
            not self.reuse_port or hasattr(socket, "SO_REUSEPORT"),
            "reuse_port",
            "needs SO_REUSEPORT, which this platform lacks",
        )
        _check(
            self.event_loop in ("auto", "asyncio", "uvloop"),
            "event_loop",
            "must be auto, asyncio or uvloop",
        )
        _check(self.resolver.cache_ttl_s > 0, "resolver.cache_ttl_s", "must be > 0")
        _check(self.resolver.negative_ttl_s >= 0, "resolver.negative_ttl_s", "must be >= 0")
        _check(self.resolver.cache_max_entries >= 1, "resolver.cache_max_entries", "must be >= 1")
        _check(
            self.credentials.api_key_overlap_s >= 0, "credentials.api_key_overlap_s", "must be >= 0"
        )
        _check(
            self.credentials.api_key_overlap_max_s >= self.credentials.api_key_overlap_s,
            "credentials.api_key_overlap_max_s",
            "must be >= credentials.api_key_overlap_s",
        )
        _check(
            self.logging.format in ("console", "json"), "logging.format", "must be console or json"
        )
        _check(
            self.logging.level in ("debug", "info", "warning", "error"),
            "logging.level",
            "must be debug, info, warning or error",
        )
        url = self.redis.url
        _check(
            url == "" or url.startswith(REDIS_URL_SCHEMES),
            "redis.url",
            "must be a redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL "
            "(or empty for the embedded Redis)",
        )
        if url:
            try:
                connection.check_url(url)
            except ValueError as exc:  # the message never contains the password
                raise ConfigError(f"config: redis.url: {exc}") from None
        _check(
            bool(self.redis.key_prefix)
            and "{" not in self.redis.key_prefix
            and "}" not in self.redis.key_prefix,
            "redis.key_prefix",
            "must be non-empty, without braces",
        )
        _check(self.redis.socket_timeout_s > 0, "redis.socket_timeout_s", "must be > 0")
        _check(
            1 <= self.redis.pool_max_connections <= 10_000,
            "redis.pool_max_connections",
            "must be 1..10000",
        )
        _check(
            1 <= self.redis.admin_pool_max_connections <= 10_000,
            "redis.admin_pool_max_connections",
            "must be 1..10000",
        )
        _check(self.redis.pool_wait_s > 0, "redis.pool_wait_s", "must be > 0")
        _check(self.redis.admin_pool_wait_s > 0, "redis.admin_pool_wait_s", "must be > 0")
        _check(self.resolver.outage_grace_s >= 0, "resolver.outage_grace_s", "must be >= 0")
        _check(
            0.05 <= self.health.check_interval_s <= 60,
            "health.check_interval_s",
            "must be 0.05..60",
        )
        # Sections that know their own rules (adapters' settings) check them here too, so a
        # bad value stops the node at start, whether or not that listener is enabled.
        for f in dataclasses.fields(self):
            section_check = getattr(getattr(self, f.name), "validate", None)
            if callable(section_check):
                section_check()
        for key, mode in (
            ("mqtt.proxy_protocol", self.mqtt.proxy_protocol),
            ("http.proxy_protocol", self.http.proxy_protocol),
        ):
            _check(
                mode == ProxyMode.OFF or bool(self.proxy.trusted_cidrs),
                key,
                "needs proxy.trusted_cidrs (the load balancers allowed to send the header)",
            )
        _check(
            not self.http.trust_forwarded_for or bool(self.proxy.trusted_cidrs),
            "http.trust_forwarded_for",
            "needs proxy.trusted_cidrs (the proxies allowed to send the header)",
        )
        if not self.node_id:
            self.node_id = f"{socket.gethostname()}-{os.getpid()}"

    def kek_file(self, environ: Mapping[str, str] | None = None) -> Path | None:
        """The file ``load_keyring`` reads the KEKs from (None: from COREM_PSK_KEK, or none)."""
        env = os.environ if environ is None else environ
        if env.get("COREM_PSK_KEK", ""):
            return None
        name = env.get("COREM_PSK_KEK_FILE", "") or self.credentials.psk_kek_file
        return Path(name) if name else None

    def load_keyring(self, environ: Mapping[str, str] | None = None) -> psk.KeyRing | None:
        """The PSK KEK ring from COREM_PSK_KEK or the configured file; None if neither is set."""
        env = os.environ if environ is None else environ
        text = env.get("COREM_PSK_KEK", "")
        source = "COREM_PSK_KEK"
        kek_file = env.get("COREM_PSK_KEK_FILE", "") or self.credentials.psk_kek_file
        if not text and kek_file:
            path = Path(kek_file)
            source = f"PSK KEK file {path}"
            try:
                text = path.read_text()
            except OSError as exc:
                raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
        if not text:
            return None
        try:
            return psk.KeyRing.parse(text)
        except Exception as exc:  # messages never contain key material
            raise ConfigError(f"{source}: {exc}") from None


def _check_proxy_mode(mode: str, key: str) -> None:
    _check(mode in tuple(ProxyMode), key, "must be off, optional or required")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config: {key}: {message}")


def _leaves(cls: type, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    hints = typing.get_type_hints(cls)
    out: dict[tuple[str, ...], Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out.update(_leaves(hint, (*prefix, f.name)))  # type: ignore[arg-type]
        else:
            out[(*prefix, f.name)] = hint
    return out


def env_names() -> dict[str, tuple[str, ...]]:
    """COREM_... variable name -> config path, for every leaf."""
    return {"COREM_" + "_".join(p).upper(): p for p in _leaves(Config)}


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or value == "":
            return None
        hint = args[0]
        origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if isinstance(value, dict | list):
                raise ValueError
            return str(value)
        if origin is list:
            (item,) = typing.get_args(hint)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise ValueError
            return [_coerce(v, item, key, source) for v in value]
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return {str(k): str(v) for k, v in value.items()}
    except (TypeError, ValueError):
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"config: {key}: expected {name} (from {source})") from None
    raise ConfigError(f"config: {key}: unsupported type")


def _apply(obj: Any, data: Mapping[str, Any], path: tuple[str, ...], source: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in data.items():
        key = ".".join((*path, str(name)))
        if name not in names:
            raise ConfigError(f"config: {key}: unknown key (in {source})")
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config: {key}: expected a mapping (in {source})")
            _apply(getattr(obj, name), value, (*path, name), source)
        else:
            setattr(obj, name, _coerce(value, hint, key, source))


def load(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    env = os.environ if environ is None else environ
    cfg = Config()
    if path is not None:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"config: cannot read {p}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config: {p} is not valid YAML{where}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"config: {p}: top level must be a mapping")
        _apply(cfg, data, (), str(p))
    leaves = _leaves(Config)
    for name, path_ in env_names().items():
        if name in env:
            holder: Any = cfg
            for part in path_[:-1]:
                holder = getattr(holder, part)
            setattr(holder, path_[-1], _coerce(env[name], leaves[path_], ".".join(path_), name))
    if cfg.redis.url_file:
        cfg.redis.url = _read_secret_line(cfg.redis.url_file, "redis.url_file")
    cfg.validate()
    return cfg


def _read_secret_line(path: str, key: str) -> str:
    """The first non-empty line of a secret file (its content never appears in an error)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"config: {key}: cannot read {path}: {exc.strerror}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"config: {key}: {path} is empty")
    return lines[0]
