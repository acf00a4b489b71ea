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

    def jitp_issuer(self, subject_hash: str) -> str:
        """String (JSON: tenant, CA fingerprint): the auto-provisioning CA whose subject name
        has this SHA-256 (of its DER), found from a device certificate's issuer name."""
        return f"{self._r}:jitp:issuer:{subject_hash}"

    def challenge(self, token: str) -> str:
        """String -> tenant_id: a proof-of-possession challenge; TTL, deleted when used."""
        return f"{self._r}:challenge:{token}"

    def tenant_challenges(self, tenant_id: str) -> str:
        """Sorted set token -> expiry: a tenant's outstanding challenges (bounds how many)."""
        return f"{self._r}:tenant:{tenant_id}:challenges"

    # -- provisioning by claim (store/registry/claims.py) -------------------------------
    def claim(self, claim_id: str) -> str:
        """Hash: one claim (tenant, kinds, max_uses, uses, expires_at, status, lookup)."""
        return f"{self._r}:claim:{claim_id}"

    def tenant_claims(self, tenant_id: str) -> str:
        """Sorted set of the tenant's claim ids by creation time."""
        return f"{self._r}:tenant:{tenant_id}:claims"

    def claim_auth(self, kind: str, lookup: str) -> str:
        """String (JSON: tenant, claim id; a PSK claim's key sealed): a claim's secret, found
        only by the provisioning endpoints, never by the device resolver. Deleted on revoke;
        expires with the claim."""
        return f"{self._r}:claimauth:{kind}:{lookup}"

    def enrolment(self, tenant_id: str, hardware_id: str) -> str:
        """Hash: what a claim enrolled for (tenant, hardware_id): claim_id, device_id,
        credential_id, its lookup and record keys, issued_at, issues, used_at (first use)."""
        return f"{self._r}:enrol:{tenant_id}:{hardware_id}"

    def provisioning_rate(self, scope: str, window: int) -> str:
        """Counter: provisioning requests of one claim or tenant in one fixed window (TTL)."""
        return f"{self._r}:provrate:{scope}:{window}"

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

    # -- live sessions across the nodes (store/sessions_index.py) ------------------------------
    @property
    def sessions_nodes(self) -> str:
        """Sorted set: node ids by their last sessions-index heartbeat."""
        return f"{self._r}:sessions:nodes"

    def node_sessions(self, node_id: str, tenant_id: str) -> str:
        """Hash session_id -> JSON: the tenant's live sessions on that node (expires with it)."""
        return f"{self._r}:sessions:node:{node_id}:{tenant_id}"

    def node_status(self, node_id: str) -> str:
        """String (JSON): the node's status and key figures, rewritten each heartbeat (TTL)."""
        return f"{self._r}:sessions:status:{node_id}"

    @property
    def sessions_channel(self) -> str:
        """Pub/sub: operator disconnects, routed to the node holding the session."""
        return f"{self.prefix}:sessions:disconnect"

    # -- DTLS Connection ID across nodes (adapters/dtls/cluster.py) ---------------------------
    @property
    def cid_nodes(self) -> str:
        """Hash: node tag (hex, the first bytes of the CIDs a node issues) -> "host:port"
        where that node takes forwarded CID records."""
        return f"{self._r}:dtls:cid:nodes"

    @property
    def cid_forward_key(self) -> str:
        """String: the HMAC key that authenticates CID records forwarded between nodes
        (32 random bytes, hex; set once by the first node)."""
        return f"{self._r}:dtls:cid:key"

    # -- DTLS session resumption (store/dtls_sessions.py) ------------------------------------
    def dtls_session(self, session_id_hex: str) -> str:
        """String (JSON, TTL ``coap.resumption.lifetime_s``): a session kept for resumption
        under its RFC 5246 session id: ``kid`` (the sealing key's id), ``nonce`` and
        ``sealed`` (AES-256-GCM of the suite, master secret, extended-master-secret flag and
        credential reference)."""
        return f"{self._r}:dtls:resume:s:{session_id_hex}"

    @property
    def dtls_session_keys(self) -> str:
        """Hash: key id (the rotation period's number) -> sealing key (32 bytes, hex), set
        once per period by the first node; deleted once no session sealed under it lives."""
        return f"{self._r}:dtls:resume:keys"

    def lwm2m_reply(self, request_id: str) -> str:
        """List holding the one reply to a routed request (short TTL)."""
        return f"{self.prefix}:lwm2m:reply:{{{request_id}}}"

    def lwm2m_events(self, tenant_id: str) -> str:
        """Stream of the tenant's LwM2M events (registrations, queued requests, firmware)."""
        return f"{self.prefix}:lwm2m:events:{{{tenant_id}}}"

    def lwm2m_awake(self, device_id: str) -> str:
        """String: present while a queue-mode device is awake (PX = the awake window)."""
        return f"{self._r}:lwm2m:awake:{device_id}"

    def lwm2m_queue(self, device_id: str) -> str:
        """List of the request ids queued for a sleeping queue-mode device, oldest first."""
        return f"{self._r}:lwm2m:queue:{device_id}"

    def lwm2m_queued(self, request_id: str) -> str:
        """String (JSON): one queued request and, once finished, its result."""
        return f"{self._r}:lwm2m:queued:{request_id}"

    @property
    def lwm2m_queue_deadlines(self) -> str:
        """Sorted set request id -> deadline of every queued request (the expiry sweep)."""
        return f"{self._r}:lwm2m:queue-deadlines"

    # -- firmware (store/firmware.py) ------------------------------------------------------
    def firmware_image(self, image_id: str) -> str:
        """Hash: one firmware image's metadata (tenant, name, version, size, sha256, chunks)."""
        return f"{self._r}:fw:img:{image_id}"

    def firmware_chunk(self, image_id: str, n: int) -> str:
        """String: chunk ``n`` of an image (base64 of up to 64 KiB)."""
        return f"{self._r}:fw:img:{image_id}:{n}"

    def tenant_firmware(self, tenant_id: str) -> str:
        """Sorted set: the tenant's image ids by upload time."""
        return f"{self._r}:tenant:{tenant_id}:fw"

    def firmware_campaign(self, campaign_id: str) -> str:
        """String (JSON): a firmware campaign (tenant, image, method, its job ids)."""
        return f"{self._r}:fw:campaign:{campaign_id}"

    def firmware_job(self, job_id: str) -> str:
        """String (JSON): one device's firmware update job."""
        return f"{self._r}:fw:job:{job_id}"

    def firmware_device_job(self, device_id: str) -> str:
        """String -> the device's current firmware job id."""
        return f"{self._r}:fw:dev:{device_id}"

    def firmware_token(self, token: str) -> str:
        """String -> the job id whose pull URI ends in ``token``."""
        return f"{self._r}:fw:token:{token}"

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
