"""The identity model: who a device is, as resolved from its credential."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from enum import StrEnum

from corem_ingress.core.errors import InvalidArgument


class CredentialKind(StrEnum):
    API_KEY = "api_key"
    PSK = "psk"
    X509 = "x509"

    @classmethod
    def parse(cls, value: str) -> CredentialKind:
        try:
            return cls(value)
        except ValueError:
            raise InvalidArgument("credential kind must be one of: api_key, psk, x509") from None


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What every adapter gets back from the resolver; never taken from the device's word."""

    tenant_id: str
    device_id: str
    credential_kind: CredentialKind
    #: key_id for API keys, the PSK credential id for PSKs, the fingerprint for X.509.
    credential_id: str


class DeviceStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    tenant_id: str
    hardware_id: str
    credential_kind: CredentialKind
    status: DeviceStatus
    created_at: float
    updated_at: float

    def to_json(self) -> dict[str, object]:
        return {
            "device_id": self.device_id,
            "tenant_id": self.tenant_id,
            "hardware_id": self.hardware_id,
            "credential_kind": self.credential_kind.value,
            "status": self.status.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


_TENANT_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62})$")
# Printable ASCII without whitespace or characters that break keys and URLs.
_HARDWARE_RE = re.compile(r"^[A-Za-z0-9._:@+=-]{1,128}$")


def check_tenant_id(value: str) -> str:
    if not isinstance(value, str) or not _TENANT_RE.fullmatch(value):
        raise InvalidArgument(
            "tenant id must be 1-63 characters of a-z, 0-9, '-' or '_', "
            "starting with a letter or digit"
        )
    return value


def check_hardware_id(value: str) -> str:
    if not isinstance(value, str) or not _HARDWARE_RE.fullmatch(value):
        raise InvalidArgument(
            "hardware id must be 1-128 characters of A-Z, a-z, 0-9 and . _ : @ + = -"
        )
    return value


def check_device_id(value: str) -> str:
    """Device ids are platform-assigned UUIDs; anything else cannot name a device."""
    try:
        parsed = uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument("device id must be a UUID") from None
    if str(parsed) != value:
        raise InvalidArgument("device id must be a lower-case hyphenated UUID")
    return value


def new_device_id() -> str:
    return str(uuid.uuid4())
