"""Tenant trust anchors: the CA certificates a tenant's device certificates must chain to.

Certificates are public and the fingerprint of a device certificate is global, so a
certificate is bound to a tenant only by the tenant's own trust anchors (roots or
intermediates, registered with ``corem-ingress cas add`` / ``POST /api/v1/cas``). Two
decisions, both pure:

* at registration, ``verify_registration_chain``: the certificate verifies against the
  tenant's CAs, each one a trust anchor (OpenSSL's checks, as in the handshake: signature,
  validity of every certificate, basicConstraints CA, path length, key usage);
* at the handshake, ``admits``: the chain the listener verified (against the
  deployment-wide ``client_ca_files``) holds one of the tenant's CAs, or is a lone
  self-signed leaf that was registered with proof of possession, in a tenant that allows
  self-signed devices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from OpenSSL import crypto

from corem_ingress.core.certs import is_self_signed
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
        return cls(tuple(hashlib.sha256(der).hexdigest() for der in chain[1:]))


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


#: OpenSSL: no issuer found (locally / at all) — the path may end at a registered
#: intermediate instead of a root.
_NO_ISSUER = frozenset({2, 20})


def verify_registration_chain(
    leaf: x509.Certificate, cas: Mapping[str, x509.Certificate], *, now: float
) -> tuple[str, ...]:
    """The fingerprints of the tenant CAs on the certificate's verified path.

    ``cas``: the tenant's CA certificates by fingerprint. First the full path: the
    tenant's roots are the trust anchors and its intermediates fill the path, so every
    constraint up to the root holds (path length, CA flags, validity, signatures). When no
    root is reached, a registered intermediate is itself the anchor (OpenSSL
    ``X509_V_FLAG_PARTIAL_CHAIN``). Raises FailedPrecondition when no path exists; the
    answer is the same whether the certificate is unknown or another tenant's.
    """
    if not cas:
        raise FailedPrecondition(
            "certificate does not chain to a CA registered for this tenant "
            "(this tenant has no CA: add one first)"
        )
    roots = [c for c in cas.values() if is_self_signed(c)]
    intermediates = [c for c in cas.values() if not is_self_signed(c)]
    chain, code, reason = _openssl_verify(leaf, roots, intermediates, now=now, partial=False)
    if chain is None and code in _NO_ISSUER and intermediates:
        chain, code, reason = _openssl_verify(leaf, list(cas.values()), [], now=now, partial=True)
    if chain is None:
        raise FailedPrecondition(
            f"certificate does not chain to a CA registered for this tenant ({reason})"
        )
    return tuple(fp for fp in PeerChain.from_ders(chain).issuers if fp in cas)


def _openssl_verify(
    leaf: x509.Certificate,
    trusted: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate],
    *,
    now: float,
    partial: bool,
) -> tuple[list[bytes] | None, int, str]:
    """(the verified chain as DER, leaf first, or None; OpenSSL's error code; its reason)."""
    store = crypto.X509Store()
    for ca in trusted:
        store.add_cert(crypto.X509.from_cryptography(ca))
    if partial:
        store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    store.set_time(datetime.fromtimestamp(now, UTC))
    context = crypto.X509StoreContext(
        store,
        crypto.X509.from_cryptography(leaf),
        [crypto.X509.from_cryptography(c) for c in untrusted],
    )
    try:
        verified = context.get_verified_chain()
    except crypto.X509StoreContextError as exc:
        code = exc.errors[0] if exc.errors else 0
        # OpenSSL's reason names no certificate: safe to show.
        return None, int(code), str(exc) or "no path"
    return [crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in verified], 0, ""
