"""Tenant trust anchors: the CA certificates a tenant's device certificates must chain to.

Certificates are public and the fingerprint of a device certificate is global, so a
certificate is bound to a tenant only by the tenant's own trust anchors (roots or
intermediates, registered with ``corem-ingress cas add`` / ``POST /api/v1/cas``). Two
decisions, both pure:

* at registration, ``verify_registration_chain``: the certificate verifies against the
  tenant's CAs (RFC 5280 path validation by ``cryptography``: signatures, validity of
  every certificate, basicConstraints CA, path length);
* at the handshake, ``admits``: the chain the listener verified (against the
  deployment-wide ``client_ca_files``) holds one of the tenant's CAs, or is a lone
  self-signed leaf that was registered with proof of possession, in a tenant that allows
  self-signed devices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from corem_ingress.core.certs import fingerprint_der, is_self_signed
from corem_ingress.core.errors import FailedPrecondition


@dataclass(frozen=True, slots=True)
class PeerChain:
    """The certificate chain a device presented, as its listener verified it."""

    #: SHA-256 fingerprints (DER, lower-case hex) of every certificate above the leaf in the
    #: verified chain, leaf side first. Empty: a lone leaf (self-signed, or itself trusted).
    issuers: tuple[str, ...]

    @property
    def leaf_only(self) -> bool:
        return not self.issuers

    @classmethod
    def from_ders(cls, chain: Sequence[bytes]) -> PeerChain:
        """From the verified chain's DER certificates, leaf first."""
        return cls(tuple(fingerprint_der(der) for der in chain[1:]))


@dataclass(frozen=True, slots=True)
class TenantTrust:
    """What the handshake needs of a tenant: its CA fingerprints and its self-signed setting."""

    cas: frozenset[str]
    allow_self_signed: bool = False

    def admits(self, chain: PeerChain, *, proven_self_signed: bool) -> bool:
        """May a certificate of this tenant, presented with ``chain``, authenticate?

        ``proven_self_signed``: the certificate was registered as a self-signed one, with
        proof of possession of its key.
        """
        if chain.leaf_only:
            return self.allow_self_signed and proven_self_signed
        return any(fp in self.cas for fp in chain.issuers)


#: The CA profile of registration: basicConstraints must be there (CA:TRUE is checked by
#: path validation), anything else is allowed — device PKIs are not the web's (no SAN or
#: AKI required). Path length, signatures and validity are checked by path validation.
_CA_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.BasicConstraints, Criticality.AGNOSTIC, None
)


def verify_registration_chain(
    leaf: x509.Certificate, cas: Mapping[str, x509.Certificate], *, now: float
) -> tuple[str, ...]:
    """The fingerprints of the tenant CAs on the certificate's verified path.

    ``cas``: the tenant's CA certificates by fingerprint. The tenant's roots are trust
    anchors, and so is a registered intermediate whose issuer the tenant did not
    register; the other intermediates only fill the path, so the constraints of every CA
    above them hold (path length, CA flags, validity, signatures). Raises
    FailedPrecondition when no path exists; the answer is the same whether the
    certificate is unknown or another tenant's.
    """
    if not cas:
        raise FailedPrecondition(
            "certificate does not chain to a CA registered for this tenant "
            "(this tenant has no CA: add one first)"
        )
    anchors: list[x509.Certificate] = []
    helpers: list[x509.Certificate] = []
    for fp, ca in cas.items():
        issuers = (other for other_fp, other in cas.items() if other_fp != fp)
        below_a_registered_ca = not is_self_signed(ca) and any(_issued_by(ca, i) for i in issuers)
        (helpers if below_a_registered_ca else anchors).append(ca)
    verifier = (
        PolicyBuilder()
        .store(Store(anchors))
        .time(datetime.fromtimestamp(now, UTC))
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=ExtensionPolicy.permit_all())
        .build_client_verifier()
    )
    try:
        chain = verifier.verify(leaf, helpers).chain
    except (VerificationError, ValueError) as exc:
        raise FailedPrecondition(
            f"certificate does not chain to a CA registered for this tenant ({_reason(exc)})"
        ) from None
    fingerprints = PeerChain.from_ders([c.public_bytes(Encoding.DER) for c in chain]).issuers
    return tuple(fp for fp in fingerprints if fp in cas)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, ValueError, TypeError: all mean 'not its issuer'
        return False
    return True


def _reason(exc: Exception) -> str:
    """The validator's reason, without the certificate it names (shown to the caller)."""
    text = str(exc).removeprefix("validation failed: ").removeprefix("candidates exhausted: ")
    return text.split(" (encountered", 1)[0][:160] or "no path"
