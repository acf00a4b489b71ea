"""``trust.bootstrap_cas``: CA files registered as tenant trust anchors at ``serve`` start.

For dev (the embedded Redis starts empty: ``configs/dev.yaml`` registers the dev CA for
``acme``) and for deployments that keep their trust anchors in config. Idempotent. A
file that cannot be read or holds no CA certificate stops the node (a config error);
Redis being unreachable does not (what was registered before is still there).
"""

from __future__ import annotations

from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from corem_ingress.config import ConfigError, TrustConfig
from corem_ingress.core.errors import InvalidArgument, Unavailable
from corem_ingress.store.registry import Registry

log = structlog.get_logger("corem.trust")

ACTOR = "config:trust.bootstrap_cas"


def _read_cas(path: str) -> list[bytes]:
    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(
            f"config: trust.bootstrap_cas: cannot read {path}: {exc.strerror}"
        ) from None
    except ValueError:
        raise ConfigError(f"config: trust.bootstrap_cas: {path} holds no PEM certificate") from None
    return [c.public_bytes(Encoding.PEM) for c in certs]


async def bootstrap_cas(registry: Registry, config: TrustConfig) -> None:
    for tenant, path in config.entries():
        for pem in _read_cas(path):
            try:
                record, added = await registry.add_ca(tenant, pem, actor=ACTOR)
            except InvalidArgument as exc:
                raise ConfigError(f"config: trust.bootstrap_cas: {path}: {exc.message}") from None
            except Unavailable as exc:
                log.warning("trust.bootstrap_failed", tenant=tenant, path=path, error=exc.message)
                return
            log.info(
                "trust.bootstrap_ca",
                tenant=tenant,
                fingerprint=record.info.fingerprint,
                subject=record.info.subject,
                added=added,
            )
