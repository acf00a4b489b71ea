"""CONNECT authentication: certificate fingerprint or API-key password -> DeviceIdentity.

Only the shared resolver is asked. There is no anonymous path: a connection with
neither a certificate nor a password is refused (CONNACK 5), whatever the listener.
"""

from __future__ import annotations

from dataclasses import dataclass

from corem_ingress.adapters.mqtt import policy
from corem_ingress.adapters.mqtt.codec import Connect
from corem_ingress.core import api_keys
from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import InvalidArgument, Unauthenticated
from corem_ingress.core.identity import DeviceIdentity
from corem_ingress.core.trust import PeerChain
from corem_ingress.resolver import Resolver


@dataclass(frozen=True, slots=True)
class Authenticated:
    identity: DeviceIdentity
    #: The resolver handle of the credential (fingerprint or API-key hash).
    lookup: str
    client_id: str
    #: The verified certificate chain, when a certificate authenticated the session.
    chain: PeerChain | None = None


async def authenticate(
    resolver: Resolver,
    connect: Connect,
    fingerprint: str | None,
    *,
    client_auth: str,
    chain: PeerChain | None = None,
    der: bytes | None = None,
) -> Authenticated:
    """Raises an IngressError whose ``mqtt_connack`` is the CONNACK code to send."""
    if fingerprint is not None:
        # A presented certificate is the credential; any password is ignored. Its chain
        # must end in one of the resolved tenant's CAs.
        chain = chain if chain is not None else PeerChain(())
        # ``der``: an unregistered certificate may be provisioned just in time (JITP).
        identity = await resolver.resolve_cert(fingerprint, chain=chain, der=der)
        lookup = fingerprint
    elif client_auth == "required":
        raise Unauthenticated(
            cause=Cause.NO_CREDENTIAL, reason="no client certificate"
        )  # the handshake prevents this
    else:
        if connect.password is None:
            raise Unauthenticated(cause=Cause.NO_CREDENTIAL, reason="no certificate, no password")
        try:
            raw = connect.password.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidArgument("API key is malformed") from None
        if not api_keys.is_well_formed(raw):
            raise InvalidArgument("API key is malformed")
        identity = await resolver.resolve_api_key(raw)
        lookup = api_keys.hash_key(raw)
    # MQTT 5 may leave the client id empty whatever Clean Start says (the server assigns).
    client_id = policy.client_id_for(
        identity, connect.client_id, connect.clean_session or connect.protocol_level == 5
    )
    return Authenticated(identity, lookup, client_id, chain if fingerprint is not None else None)
