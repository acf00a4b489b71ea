"""The Redis key schema, in one place (documented in docs/redis-keys.md).

Registry keys share the hash tag ``{<prefix>}`` so that every multi-key script
runs in one Redis Cluster slot; uplink and downlink streams are tagged per
tenant so traffic spreads across slots.
"""

from __future__ import annotations

from dataclasses import dataclass

from corem_ingress.core.identity import CredentialKind


@dataclass(frozen=True, slots=True)
class KeySchema:
    prefix: str = "corem"

    @property
    def _r(self) -> str:
        return "{" + self.prefix + "}"

    # -- devices -------------------------------------------------------------------
    def device(self, device_id: str) -> str:
        """Hash: device_id, tenant_id, hardware_id, credential_kind, status, created/updated_at."""
        return f"{self._r}:dev:{device_id}"

    def device_credentials(self, device_id: str) -> str:
        """Set of the device's credential ids (active and past)."""
        return f"{self._r}:dev:{device_id}:creds"

    def hardware(self, tenant_id: str, hardware_id: str) -> str:
        """String -> device_id: the idempotency anchor of provisioning."""
        return f"{self._r}:hw:{tenant_id}:{hardware_id}"

    def tenant_devices(self, tenant_id: str) -> str:
        """Sorted set of device ids by creation time."""
        return f"{self._r}:tenant:{tenant_id}:devices"

    def tenant_certs(self, tenant_id: str) -> str:
        """Sorted set of certificate fingerprints by registration time."""
        return f"{self._r}:tenant:{tenant_id}:certs"

    # -- tenant trust anchors (store/registry/cas.py) ----------------------------------
    def tenant_cas(self, tenant_id: str) -> str:
        """Sorted set of the tenant's CA fingerprints by time added."""
        return f"{self._r}:tenant:{tenant_id}:cas"

    def tenant_ca(self, tenant_id: str, fingerprint: str) -> str:
        """Hash: one CA of the tenant (its PEM, subject, validity, key type, options)."""
        return f"{self._r}:tenant:{tenant_id}:ca:{fingerprint}"

    def tenant_settings(self, tenant_id: str) -> str:
        """Hash: the tenant's trust settings (``allow_self_signed``: 0/1)."""
        return f"{self._r}:tenant:{tenant_id}:settings"

    def challenge(self, token: str) -> str:
        """String -> tenant_id: a proof-of-possession challenge; TTL, deleted when used."""
        return f"{self._r}:challenge:{token}"

    def tenant_challenges(self, tenant_id: str) -> str:
        """Sorted set token -> expiry: a tenant's outstanding challenges (bounds how many)."""
        return f"{self._r}:tenant:{tenant_id}:challenges"

    # -- credentials ---------------------------------------------------------------
    def lookup(self, kind: CredentialKind, lookup: str) -> str:
        """String (compact JSON) read by the resolver; exists only while the credential works.

        lookup = SHA-256 of an API key, a PSK identity, or a certificate fingerprint.
        """
        return f"{self._r}:auth:{kind.value}:{lookup}"

    def credential(self, credential_id: str) -> str:
        """Hash: the credential's record, kept after revocation (status, times, cert metadata)."""
        return f"{self._r}:cred:{credential_id}"

    # -- streams and channels --------------------------------------------------------
    @property
    def bus_channel(self) -> str:
        return f"{self.prefix}:bus"

    @property
    def audit_stream(self) -> str:
        return f"{self._r}:audit"

    def uplink_stream(self, tenant_id: str) -> str:
        return f"{self.prefix}:uplink:{{{tenant_id}}}"

    def downlink_stream(self, tenant_id: str) -> str:
        """Record of every downlink sent to the tenant's devices."""
        return f"{self.prefix}:downlink:{{{tenant_id}}}"

    @property
    def downlink_channel(self) -> str:
        """Pub/sub fan-out of downlinks to every node."""
        return f"{self.prefix}:downlink"

    # -- LwM2M -------------------------------------------------------------------------
    def lwm2m_registration(self, registration_id: str) -> str:
        """String (JSON): one LwM2M registration; TTL = lifetime left + grace."""
        return f"{self._r}:lwm2m:reg:{registration_id}"

    def lwm2m_device(self, device_id: str) -> str:
        """String -> the device's current registration id; same TTL as the registration."""
        return f"{self._r}:lwm2m:dev:{device_id}"

    def lwm2m_requests(self, node_id: str) -> str:
        """Stream of operator requests for the devices whose DTLS session ``node_id`` holds."""
        return f"{self.prefix}:lwm2m:req:{{{node_id}}}"

    # -- limits shared by the nodes (store/limits_sync.py) -----------------------------------
    @property
    def limits_nodes(self) -> str:
        """Sorted set: node ids by the time they last shared their counts."""
        return f"{self._r}:limits:nodes"

    def limits_connections(self, node_id: str) -> str:
        """Hash tenant_id -> live connections on that node (expires with the node)."""
        return f"{self._r}:limits:conns:{node_id}"

    @property
    def limits_blocks(self) -> str:
        """Sorted set: source addresses blocked for failed authentications, by block end."""
        return f"{self._r}:limits:blocks"

    def lwm2m_reply(self, request_id: str) -> str:
        """List holding the one reply to a routed request (short TTL)."""
        return f"{self.prefix}:lwm2m:reply:{{{request_id}}}"

    # -- device sessions and offline downlinks (store/device_sessions.py) --------------------
    # Tagged per device: each device's session, queue and sent-set share one Cluster slot
    # (one script touches them together); devices spread over the slots.
    def device_session(self, device_id: str) -> str:
        """Hash: the device's downlink session (owner, persistent, expiry_s, transport,
        subs); no TTL while connected, ``expiry_s`` once disconnected."""
        return f"{self.prefix}:sess:{{{device_id}}}"

    def downlink_queue(self, device_id: str) -> str:
        """List: the device's queued downlinks (JSON), oldest first; same TTL as its session."""
        return f"{self.prefix}:dlq:{{{device_id}}}"

    def downlink_sent(self, device_id: str) -> str:
        """Set: message ids of queued downlinks already sent once (redelivered with DUP=1)."""
        return f"{self.prefix}:dlsent:{{{device_id}}}"

    def downlink_reply(self, message_id: str) -> str:
        """List holding the delivering node's answer for one downlink (short TTL)."""
        return f"{self.prefix}:dlreply:{{{message_id}}}"

    def device_will(self, device_id: str) -> str:
        """String: the token of the device's pending (MQTT 5 delayed) will; TTL = the delay
        plus a margin. A reconnect deletes it (the will is cancelled)."""
        return f"{self.prefix}:will:{{{device_id}}}"
