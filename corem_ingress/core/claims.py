"""Fleet provisioning by claim: the rules, pure (no Redis, no sockets).

A tenant creates a *claim*: a credential shipped in every device of a batch (an API key
``ck_live_…`` or a PSK with a ``claim.``-prefixed identity) that can do exactly one
thing: ask, for a hardware_id, for that device's own credential. The claim's secret is
looked up in its own key space, never by the device resolver, so a claim cannot send an
uplink or receive a downlink.

The decision for one request (``decide``), given the claim, what was already enrolled for
the (tenant, hardware_id), and now:

* a revoked or expired claim: refused (UNAUTHENTICATED);
* the hardware_id already enrolled by this claim: its credential is re-issued (rotated)
  while that credential was never used (a lost reply never strands a device), refused
  once it was (ALREADY_EXISTS: an operator rotates it);
* the hardware_id already a device that this claim did not enrol (an operator's, or
  another claim's): refused (ALREADY_EXISTS);
* otherwise a new device is issued, if the claim has a use left (PERMISSION_DENIED when
  it has none). Re-issues do not count a use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, StrEnum

from corem_ingress.core.errors import (
    AlreadyExists,
    IngressError,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from corem_ingress.core.identity import CredentialKind

#: Claim API keys: ``ck_live_`` + URL-safe base64 (no padding) of 32 random bytes.
CLAIM_KEY_PREFIX = "ck_live_"
_CLAIM_KEY_RE = re.compile(r"^ck_live_[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$")
#: Every claim PSK identity starts with this; device PSK identities start with
#: ``<tenant>:``, and tenant ids hold no '.', so the two never meet.
CLAIM_PSK_PREFIX = "claim."
_CLAIM_ID_RE = re.compile(r"^clm_[0-9a-f]{16}$")
#: Most uses one claim may be created with (a batch).
MAX_USES = 10_000_000
#: Longest a claim may live (a batch is shipped and enrolled within this).
MAX_LIFETIME_S = 5 * 365 * 86_400.0


class ClaimKind(StrEnum):
    """How the device presents the claim."""

    API_KEY = "api_key"
    PSK = "psk"

    @classmethod
    def parse(cls, value: str) -> ClaimKind:
        try:
            return cls(value)
        except ValueError:
            raise InvalidArgument("claim kind must be one of: api_key, psk") from None


#: What a claim may issue: the device's own API key or PSK.
ISSUABLE = frozenset({CredentialKind.API_KEY, CredentialKind.PSK})


class ClaimStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Claim:
    claim_id: str
    tenant_id: str
    kind: ClaimKind
    credential_kind: CredentialKind
    max_uses: int
    uses: int
    #: Epoch seconds; None: never (only until revoked).
    expires_at: float | None
    status: ClaimStatus
    created_at: float
    revoked_at: float | None = None
    #: The claim's lookup handle: SHA-256 of its key, or its PSK identity.
    lookup: str = ""

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def to_record(self) -> dict[str, str]:
        rec = {
            "claim_id": self.claim_id,
            "tenant_id": self.tenant_id,
            "kind": self.kind.value,
            "credential_kind": self.credential_kind.value,
            "max_uses": str(self.max_uses),
            "uses": str(self.uses),
            "expires_at": "" if self.expires_at is None else repr(self.expires_at),
            "status": self.status.value,
            "created_at": repr(self.created_at),
            "lookup": self.lookup,
        }
        if self.revoked_at is not None:
            rec["revoked_at"] = repr(self.revoked_at)
        return rec

    @classmethod
    def from_record(cls, data: dict[str, str]) -> Claim:
        expires = data.get("expires_at", "")
        revoked = data.get("revoked_at", "")
        return cls(
            claim_id=data["claim_id"],
            tenant_id=data["tenant_id"],
            kind=ClaimKind(data["kind"]),
            credential_kind=CredentialKind(data["credential_kind"]),
            max_uses=int(data["max_uses"]),
            uses=int(data.get("uses", "0")),
            expires_at=float(expires) if expires else None,
            status=ClaimStatus(data["status"]),
            created_at=float(data["created_at"]),
            revoked_at=float(revoked) if revoked else None,
            lookup=data.get("lookup", ""),
        )

    def to_json(self, now: float) -> dict[str, object]:
        """What an operator sees (never the claim's secret)."""
        status = self.status.value
        if self.status is ClaimStatus.ACTIVE and self.expired(now):
            status = "expired"
        elif self.status is ClaimStatus.ACTIVE and self.uses >= self.max_uses:
            status = "exhausted"
        out: dict[str, object] = {
            "claim_id": self.claim_id,
            "tenant_id": self.tenant_id,
            "kind": self.kind.value,
            "credential_kind": self.credential_kind.value,
            "max_uses": self.max_uses,
            "uses": self.uses,
            "expires_at": self.expires_at,
            "status": status,
            "created_at": self.created_at,
        }
        if self.revoked_at is not None:
            out["revoked_at"] = self.revoked_at
        if self.kind is ClaimKind.PSK:
            out["psk_identity"] = self.lookup
        return out


@dataclass(frozen=True, slots=True)
class Enrolment:
    """What a claim enrolled for one (tenant, hardware_id)."""

    claim_id: str
    device_id: str
    credential_id: str
    #: The issued credential authenticated at least once.
    used: bool


class Action(Enum):
    ISSUE = "issue"
    REISSUE = "reissue"


class Refusal(StrEnum):
    REVOKED = "claim_revoked"
    EXPIRED = "claim_expired"
    EXHAUSTED = "claim_exhausted"
    ALREADY_USED = "credential_already_used"
    NOT_CLAIMABLE = "device_not_claimable"

    def error(self) -> IngressError:
        """The error the device gets (its reply on each transport)."""
        if self is Refusal.REVOKED:
            return Unauthenticated(reason="claim revoked")
        if self is Refusal.EXPIRED:
            return Unauthenticated(reason="claim expired")
        if self is Refusal.EXHAUSTED:
            return PermissionDenied("this claim has no uses left")
        if self is Refusal.ALREADY_USED:
            return AlreadyExists(
                "this device's credential was issued and is in use: an operator rotates it"
            )
        return AlreadyExists("a device with this hardware_id exists and was not enrolled here")


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action | None
    refusal: Refusal | None = None


def decide(
    claim: Claim, enrolment: Enrolment | None, *, device_exists: bool, now: float
) -> Decision:
    """What one provisioning request with ``claim`` for a hardware_id gets (module doc)."""
    if claim.status is ClaimStatus.REVOKED:
        return Decision(None, Refusal.REVOKED)
    if claim.expired(now):
        return Decision(None, Refusal.EXPIRED)
    if enrolment is not None:
        if enrolment.claim_id != claim.claim_id:
            return Decision(None, Refusal.NOT_CLAIMABLE)
        if enrolment.used:
            return Decision(None, Refusal.ALREADY_USED)
        return Decision(Action.REISSUE)
    if device_exists:
        return Decision(None, Refusal.NOT_CLAIMABLE)
    if claim.uses >= claim.max_uses:
        return Decision(None, Refusal.EXHAUSTED)
    return Decision(Action.ISSUE)


def check_new_claim(
    kind: ClaimKind,
    credential_kind: CredentialKind,
    max_uses: int,
    expires_at: float | None,
    *,
    now: float,
) -> None:
    """InvalidArgument for a claim that cannot be created."""
    if credential_kind not in ISSUABLE:
        raise InvalidArgument("a claim issues credential kind api_key or psk")
    if isinstance(max_uses, bool) or not isinstance(max_uses, int):
        raise InvalidArgument("max_uses must be an integer")
    if not 1 <= max_uses <= MAX_USES:
        raise InvalidArgument(f"max_uses must be between 1 and {MAX_USES}")
    if expires_at is not None:
        if not math.isfinite(expires_at) or expires_at <= now:
            raise InvalidArgument("expires_at must be in the future")
        if expires_at - now > MAX_LIFETIME_S:
            raise InvalidArgument("a claim may live at most 5 years")
    del kind  # every kind may issue every issuable credential


_DURATION_RE = re.compile(r"^(\d{1,9})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_expiry(text: str, *, now: float) -> float:
    """``--expires``: a duration from now (``90d``, ``12h``, ``30m``, ``3600s``) or an ISO 8601
    time with its offset (``2027-01-01T00:00:00Z``) -> epoch seconds."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match:
        return now + int(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidArgument(
            "expiry must be a duration (90d, 12h, 30m, 3600s) or an ISO 8601 time"
        ) from None
    if when.tzinfo is None:
        raise InvalidArgument("an ISO 8601 expiry must name its offset (Z or +hh:mm)")
    return when.timestamp()


def parse_enrol_request(payload: bytes) -> str:
    """The hardware_id of an enrolment request body (MQTT, CoAP): ``{"hardware_id": …}``."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise InvalidArgument('payload must be JSON {"hardware_id": …}') from None
    if not isinstance(doc, dict) or set(doc) != {"hardware_id"}:
        raise InvalidArgument('payload must be JSON {"hardware_id": …}')
    value = doc["hardware_id"]
    if not isinstance(value, str):
        raise InvalidArgument("hardware_id must be a string")
    return value


def generate_claim_key() -> str:
    token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return CLAIM_KEY_PREFIX + token


def is_claim_key(raw: str) -> bool:
    """Well formed as a claim key (``ck_live_…``)."""
    if not isinstance(raw, str) or not _CLAIM_KEY_RE.fullmatch(raw):
        return False
    try:
        return len(base64.urlsafe_b64decode(raw[len(CLAIM_KEY_PREFIX) :] + "=")) == 32
    except (binascii.Error, ValueError):
        return False


def hash_claim_key(raw: str) -> str:
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


def new_claim_id() -> str:
    return "clm_" + secrets.token_hex(8)


def check_claim_id(claim_id: str) -> str:
    if not isinstance(claim_id, str) or not _CLAIM_ID_RE.fullmatch(claim_id):
        raise InvalidArgument("claim id is malformed")
    return claim_id


def claim_psk_identity(claim_id: str) -> str:
    """The PSK identity of a psk claim: 31 characters (tinydtls holds at most 32), with a
    random suffix (identities travel in clear: not guessable from the claim id)."""
    return f"{CLAIM_PSK_PREFIX}{claim_id.removeprefix('clm_')}.{secrets.token_hex(4)}"


def is_claim_psk_identity(identity: str) -> bool:
    return identity.startswith(CLAIM_PSK_PREFIX)


#: The pending mark in a lookup value of a credential a claim issued, until its first use
#: (its value: the hardware_id it was enrolled for).
PENDING_FIELD = "pe"


def is_pending(raw: str) -> bool:
    """Whether a lookup value (compact JSON) carries the pending mark."""
    return f'"{PENDING_FIELD}":' in raw


def rate_window(now: float, window_s: float) -> tuple[int, int]:
    """(the fixed window ``now`` falls in, seconds until it ends, at least 1)."""
    index = int(now // window_s)
    return index, max(1, math.ceil((index + 1) * window_s - now))


def over_rate(count: int, limit: int) -> bool:
    """``count`` requests in the window (this one included) exceed ``limit`` (0: no limit)."""
    return limit > 0 and count > limit
