"""The credential registry: provisioning and every credential change, atomic in Redis.

Each change runs as one Lua script (``scripts.py``, one typed wrapper per script) that
writes the records and publishes the credential event on the revocation bus in the same
step. Every operation is audited (who, tenant, what, outcome; never a secret) to the
audit stream. One module per concern:

* ``devices.py``   provisioning (idempotent on tenant + hardware_id), device lookups
* ``api_keys.py``  create / rotate (overlap) / revoke
* ``psks.py``      rotate / revoke / re-seal under a new KEK
* ``certs.py``     register / revoke / list device certificates (checked against the tenant's
                   trust anchors)
* ``cas.py``       the tenant's trust anchors (CA certificates) and its self-signed setting
* ``proofs.py``    proof-of-possession challenges (single use, expiring)
* ``claims.py``    provisioning by claim: claims, enrolments (``core/claims.py`` decides)
* ``jitp.py``      just-in-time provisioning with a tenant's auto-provisioning CA
* ``base.py``      auditing, reads, and the add / rotate / revoke steps all kinds share
* ``records.py``   what is written (``CredentialWrite``) and returned
"""

from __future__ import annotations

from corem_ingress.store.registry.base import AUDIT_MAXLEN
from corem_ingress.store.registry.jitp import JitpRegistry
from corem_ingress.store.registry.records import (
    MAX_PAGE,
    CaRecord,
    CredentialRecord,
    CredentialWrite,
    IssuedApiKey,
    IssuedChallenge,
    IssuedPsk,
    ProvisionResult,
    TenantSettings,
)


class Registry(JitpRegistry):
    """Writes (and operator reads) of devices and credentials."""


__all__ = [
    "AUDIT_MAXLEN",
    "MAX_PAGE",
    "CaRecord",
    "CredentialRecord",
    "CredentialWrite",
    "IssuedApiKey",
    "IssuedChallenge",
    "IssuedPsk",
    "ProvisionResult",
    "Registry",
    "TenantSettings",
]
