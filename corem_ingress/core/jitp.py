"""Just-in-time provisioning (JITP) with a tenant's CA: the template and its decisions, pure.

A tenant marks one of its CAs ``auto_provision`` with a template. A device presenting an
unregistered certificate issued by that CA is provisioned in the handshake: its
hardware_id comes from the certificate (``hardware_id_of``), the device is created or
found by it, and the certificate is registered (``decide``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from cryptography import x509
from cryptography.x509.oid import NameOID

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.identity import CredentialKind, check_hardware_id

#: Most default metadata entries a template may carry, and their sizes.
MAX_METADATA = 32
MAX_METADATA_TEXT = 256


class HardwareIdSource(StrEnum):
    """Where the hardware_id comes from."""

    SUBJECT_CN = "subject_cn"
    SAN_URI = "san_uri"
    SAN_DNS = "san_dns"
    SERIAL = "serial"

    @classmethod
    def parse(cls, value: str) -> HardwareIdSource:
        try:
            return cls(value)
        except ValueError:
            raise InvalidArgument(
                "hardware_id_from must be one of: subject_cn, san_uri, san_dns, serial"
            ) from None


@dataclass(frozen=True, slots=True)
class JitpTemplate:
    hardware_id_from: HardwareIdSource = HardwareIdSource.SUBJECT_CN
    #: For SAN URI/DNS: only entries starting with this, which is then cut off
    #: (``urn:dev:`` turns ``urn:dev:SN-1`` into ``SN-1``); empty: the first entry, whole.
    san_prefix: str = ""
    #: Written on every device this CA provisions.
    metadata: dict[str, str] = field(default_factory=dict)
    #: A known hardware_id presenting another certificate of this CA: register it and
    #: revoke the device's other certificates (else refused and audited).
    allow_certificate_rotation: bool = False

    def __post_init__(self) -> None:
        if len(self.metadata) > MAX_METADATA or any(
            not isinstance(k, str)
            or not isinstance(v, str)
            or not 0 < len(k) <= 64
            or len(v) > MAX_METADATA_TEXT
            for k, v in self.metadata.items()
        ):
            raise InvalidArgument(
                f"metadata: at most {MAX_METADATA} string entries (keys 1-64, values up to "
                f"{MAX_METADATA_TEXT} characters)"
            )
        if len(self.san_prefix) > 128:
            raise InvalidArgument("san_prefix: at most 128 characters")

    def to_json(self) -> dict[str, object]:
        return {
            "hardware_id_from": self.hardware_id_from.value,
            "san_prefix": self.san_prefix,
            "metadata": dict(self.metadata),
            "allow_certificate_rotation": self.allow_certificate_rotation,
        }

    @classmethod
    def from_json(cls, doc: object) -> JitpTemplate:
        """From an operator's (or a stored) template; InvalidArgument for a bad one."""
        if not isinstance(doc, dict):
            raise InvalidArgument("the template must be an object")
        unknown = set(doc) - {
            "hardware_id_from",
            "san_prefix",
            "metadata",
            "allow_certificate_rotation",
        }
        if unknown:
            raise InvalidArgument(f"template: unknown field(s): {', '.join(sorted(unknown))}")
        source = doc.get("hardware_id_from", HardwareIdSource.SUBJECT_CN.value)
        prefix = doc.get("san_prefix", "")
        metadata = doc.get("metadata", {})
        rotation = doc.get("allow_certificate_rotation", False)
        if not isinstance(source, str) or not isinstance(prefix, str):
            raise InvalidArgument("template: hardware_id_from and san_prefix are strings")
        if not isinstance(metadata, dict) or not isinstance(rotation, bool):
            raise InvalidArgument(
                "template: metadata is an object, allow_certificate_rotation a boolean"
            )
        return cls(HardwareIdSource.parse(source), prefix, dict(metadata), rotation)

    def encode(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, text: str) -> JitpTemplate:
        try:
            return cls.from_json(json.loads(text))
        except ValueError:
            raise InvalidArgument("stored template is corrupt") from None


def hardware_id_of(cert: x509.Certificate, template: JitpTemplate) -> str:
    """The device's hardware_id from its certificate; InvalidArgument when the template's
    source is missing or not a valid hardware_id."""
    source = template.hardware_id_from
    value: str | None = None
    if source is HardwareIdSource.SUBJECT_CN:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        value = str(names[0].value) if names else None
    elif source is HardwareIdSource.SERIAL:
        value = format(cert.serial_number, "x")
    else:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        kind = (
            x509.UniformResourceIdentifier if source is HardwareIdSource.SAN_URI else x509.DNSName
        )
        entries = [str(v) for v in san.get_values_for_type(kind)] if san is not None else []
        for entry in entries:
            if entry.startswith(template.san_prefix):
                value = entry[len(template.san_prefix) :]
                break
    if not value:
        raise InvalidArgument(f"the certificate has no {source.value} to take the hardware_id from")
    try:
        return check_hardware_id(value)
    except InvalidArgument:
        raise InvalidArgument(
            f"the certificate's {source.value} is not a valid hardware_id"
        ) from None


class JitpAction(Enum):
    CREATE = "create"
    ROTATE = "rotate"
    REFUSE = "refuse"


def decide(
    existing_kind: CredentialKind | None,
    template: JitpTemplate,
    *,
    possession_proven: bool = True,
) -> JitpAction:
    """What an unregistered certificate gets, given the device already holding its
    hardware_id (None: none). The anchor is immutable: a second certificate for a known
    hardware_id is a rotation, allowed only by the template, and only once the handshake
    proved possession of the new certificate's key (a rotation revokes the device's
    working certificate: a replayed public certificate must not)."""
    if existing_kind is None:
        return JitpAction.CREATE
    if (
        existing_kind is CredentialKind.X509
        and template.allow_certificate_rotation
        and possession_proven
    ):
        return JitpAction.ROTATE
    return JitpAction.REFUSE
