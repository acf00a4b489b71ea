"""The credential a handshake presents, decided from the resolver's cache alone.

OpenSSL asks for the PSK and verifies the client certificate synchronously, inside
``do_handshake``; the resolver's async path cannot run there. So the server core first
*peeks* at the client's plaintext Certificate / ClientKeyExchange (``needed``): a credential
the cache cannot vouch for yet is resolved (async) before OpenSSL sees it. Then the
callbacks (``psk``, ``verify``) decide from the cache: still unknown (Redis down) is refused
— fail closed. A refusal records its ``Cause`` on the peer and, where our policy decided it
(not OpenSSL's own chain checks), the alert of that cause.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from OpenSSL import SSL, crypto

from corem_ingress.adapters.dtls.events import Credential
from corem_ingress.adapters.dtls.peer import Peer
from corem_ingress.adapters.dtls.records import PSK_SUITES
from corem_ingress.core.causes import Cause
from corem_ingress.core.certs import fingerprint_der
from corem_ingress.core.dtls_resumption import StoredSession
from corem_ingress.core.errors import IngressError
from corem_ingress.core.identity import CredentialKind, DeviceIdentity
from corem_ingress.core.trust import PeerChain

_X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT = 18


class CredentialCache(Protocol):
    """The resolver's synchronous cache (``corem_ingress.resolver.Resolver``)."""

    def cached_psk(self, identity: str) -> Any: ...  # ResolvedPsk | None

    def cached_cert(
        self, fingerprint: str, chain: PeerChain | None = None
    ) -> DeviceIdentity | None: ...


class Authenticator:
    def __init__(
        self,
        credentials: CredentialCache,
        *,
        clock: Callable[[], float],
        check_cert_validity: bool = True,
    ) -> None:
        self._credentials = credentials
        #: The server's ``now`` (certificate validity is checked against it).
        self._clock = clock
        self._check_validity = check_cert_validity

    def needed(self, peer: Peer, data: bytes) -> tuple[CredentialKind, str] | None:
        """A credential in this datagram that the cache cannot vouch for yet, if any."""
        peek = peer.peek
        had_cert, had_psk = peek.certificate_der is not None, peek.psk_identity is not None
        peek.feed(data)
        wanted: tuple[CredentialKind, str] | None = None
        if not had_cert and peek.certificate_der is not None:
            wanted = (CredentialKind.X509, fingerprint_der(peek.certificate_der))
        elif not had_psk and peek.psk_identity is not None and peer.suite in PSK_SUITES:
            try:
                wanted = (CredentialKind.PSK, peek.psk_identity.decode())
            except UnicodeDecodeError:
                return None
        if wanted is None or wanted in peer.looked_up:
            return None
        try:
            if wanted[0] is CredentialKind.PSK:
                known = self._credentials.cached_psk(wanted[1]) is not None
            else:
                known = self._credentials.cached_cert(wanted[1]) is not None
        except IngressError:
            known = True  # the cache knows it is bad: let the callback refuse it now
        return None if known else wanted

    def psk(self, conn: SSL.Connection, identity: bytes) -> bytes | None:
        """OpenSSL's PSK callback. Every PSK refusal is told with OpenSSL's
        unknown_psk_identity alert (RFC 4279): that identity's key cannot be used."""
        peer: Peer = conn.get_app_data()
        try:
            text = identity.decode()
        except UnicodeDecodeError:
            peer.refusal = (Cause.MALFORMED, "psk identity is not UTF-8")
            return None
        try:
            resolved = self._credentials.cached_psk(text)
        except IngressError as exc:
            peer.refusal = (exc.cause, f"psk identity {text!r}: {exc.cause.label}")
            return None
        if resolved is None:
            peer.refusal = (
                Cause.UNAVAILABLE,
                f"psk identity {text!r} not vouched for by the resolver cache",
            )
            return None
        peer.credential = Credential(CredentialKind.PSK, text, resolved.identity)
        key: bytes = resolved.psk
        peer.secret_digest = hashlib.sha256(key).digest()  # for a later resumption's re-check
        return key

    def recheck(self, peer: Peer, stored: StoredSession) -> Credential | tuple[Cause, str]:
        """A stored session's credential, from the cache (filled by the caller's resolve):
        still registered, not revoked, the same PSK, the certificate still valid and its
        chain still ending in one of the tenant's CAs. -> the credential, or why not."""
        try:
            kind = CredentialKind(stored.kind)
        except ValueError:
            return Cause.MALFORMED, f"stored session of kind {stored.kind!r}"
        try:
            if kind is CredentialKind.PSK:
                resolved = self._credentials.cached_psk(stored.lookup)
                if resolved is None:
                    return Cause.UNAVAILABLE, f"psk identity {stored.lookup!r} not vouched for"
                digest = hashlib.sha256(resolved.psk).digest()
                if not hmac.compare_digest(digest, stored.secret_digest):
                    return Cause.UNKNOWN_OR_REVOKED, f"psk identity {stored.lookup!r}: key changed"
                return Credential(kind, stored.lookup, resolved.identity)
            if self._check_validity and stored.not_after and self._clock() > stored.not_after:
                return Cause.CERTIFICATE_EXPIRED, "outside its validity period"
            chain = PeerChain(stored.chain)
            identity = self._credentials.cached_cert(stored.lookup, chain)
        except IngressError as exc:
            return exc.cause, f"{stored.kind} {stored.lookup[:16]}: {exc.cause.label}"
        if identity is None:
            return Cause.UNAVAILABLE, f"certificate {stored.lookup[:16]}… not vouched for"
        return Credential(kind, stored.lookup, identity, chain)

    def verify(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        """OpenSSL's verify callback, once per certificate of the chain."""
        peer: Peer | None = conn.get_app_data()
        if peer is None:
            return False
        if depth > 0:
            if not ok:
                # OpenSSL's alert names the chain error (unknown_ca, certificate_expired, ...).
                peer.refusal = (Cause.BAD_CERTIFICATE, f"chain error {errno} at depth {depth}")
            else:
                der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
                peer.chain_above_leaf[depth] = fingerprint_der(der)
            return bool(ok)
        if not ok and errno != _X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
            peer.refusal = (Cause.BAD_CERTIFICATE, f"certificate error {errno}")
            return False
        c = cert.to_cryptography()
        peer.not_after = c.not_valid_after_utc.timestamp()
        if self._check_validity:
            now = datetime.fromtimestamp(self._clock(), UTC)
            if not c.not_valid_before_utc <= now <= c.not_valid_after_utc:
                _refuse(peer, Cause.CERTIFICATE_EXPIRED, "outside its validity period")
                return False
        fp = fingerprint_der(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert))
        above = peer.chain_above_leaf
        chain = PeerChain(tuple(above[d] for d in sorted(above)))
        try:
            # With the chain: it must end in one of the resolved tenant's CAs (FOREIGN_CA,
            # alert unknown_ca, otherwise).
            identity = self._credentials.cached_cert(fp, chain)
        except IngressError as exc:
            _refuse(peer, exc.cause, f"certificate {fp[:16]}…: {exc.cause.label}")
            return False
        if identity is None:
            _refuse(
                peer, Cause.UNAVAILABLE, f"certificate {fp[:16]}… not vouched for by the resolver"
            )
            return False
        peer.credential = Credential(CredentialKind.X509, fp, identity, chain)
        return True


def _refuse(peer: Peer, cause: Cause, detail: str) -> None:
    """Our policy refuses: this cause, and its alert rather than OpenSSL's generic one
    (an unregistered or revoked certificate: access_denied, not internal_error)."""
    peer.refusal = (cause, detail)
    peer.alert = cause.dtls_alert
