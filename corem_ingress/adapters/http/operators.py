"""Operator tokens for the admin API: configured as SHA-256 hashes, one tenant each.

Format (the file named by ``http.admin_tokens_file`` and/or the environment
variable ``COREM_HTTP_ADMIN_TOKENS``; both are read and merged)::

    # tenant_id:sha256hex[:name]
    acme:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8:ops-alice

* ``sha256hex`` is the lower- or upper-case hex SHA-256 of the token's UTF-8 text;
  the token itself is never configured, stored or logged.
* ``name`` (``[A-Za-z0-9._-]{1,64}``) names the token in audit records as
  ``admin:<name>``; default ``<tenant>-<first 8 hex>``.
* Blank lines and ``#`` comments are ignored; in the environment variable, ``;``
  also separates entries.
* A hash may appear once: one token sees exactly one tenant.

``python -m corem_ingress.adapters.http token --tenant acme --name ops-alice``
prints a new random token and the line to configure for it.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from corem_ingress.adapters.http.device_auth import bearer_token
from corem_ingress.config import ConfigError, HttpConfig
from corem_ingress.core.causes import Cause
from corem_ingress.core.errors import InvalidArgument, Unauthenticated
from corem_ingress.core.identity import check_tenant_id

ENV_VAR = "COREM_HTTP_ADMIN_TOKENS"
TOKEN_PREFIX = "cop_"  # noqa: S105 (a prefix, not a secret)
_HASH_RE = re.compile(r"[0-9a-fA-F]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True, slots=True)
class Operator:
    """Who called the admin API: the token's tenant and its name (for audit records)."""

    tenant_id: str
    name: str

    @property
    def actor(self) -> str:
        return f"admin:{self.name}"


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    operator: Operator


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_tokens(text: str, source: str) -> list[tuple[str, Operator]]:
    """``(sha256hex, Operator)`` per entry. Errors name the line, never its content."""
    out: list[tuple[str, Operator]] = []
    entries = [e for line in text.splitlines() for e in line.split(";")]
    for number, raw in enumerate(entries, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) not in (2, 3):
            raise ConfigError(f"{source}: entry {number}: expected tenant_id:sha256hex[:name]")
        tenant, digest = parts[0].strip(), parts[1].strip()
        try:
            check_tenant_id(tenant)
        except InvalidArgument as exc:
            raise ConfigError(f"{source}: entry {number}: {exc.message}") from None
        if not _HASH_RE.fullmatch(digest):
            raise ConfigError(
                f"{source}: entry {number}: the second field must be the token's SHA-256 "
                "as 64 hex characters (configure the hash, never the token)"
            )
        digest = digest.lower()
        name = parts[2].strip() if len(parts) == 3 else f"{tenant}-{digest[:8]}"
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(f"{source}: entry {number}: name must match [A-Za-z0-9._-]{{1,64}}")
        out.append((digest, Operator(tenant, name)))
    return out


class OperatorTokens:
    """The configured tokens; ``authenticate`` compares every hash in constant time."""

    def __init__(self, entries: Sequence[tuple[str, Operator]]) -> None:
        seen: set[str] = set()
        self._entries: list[_Entry] = []
        for digest, operator in entries:
            if digest in seen:
                raise ConfigError(
                    "admin tokens: the same token hash is configured twice "
                    f"(tenant {operator.tenant_id}): one token sees one tenant"
                )
            seen.add(digest)
            self._entries.append(_Entry(bytes.fromhex(digest), operator))

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, cfg: HttpConfig, environ: Mapping[str, str] | None = None) -> OperatorTokens:
        env = os.environ if environ is None else environ
        entries = parse_tokens(env.get(ENV_VAR, ""), ENV_VAR)
        if cfg.admin_tokens_file:
            path = Path(cfg.admin_tokens_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"config: http.admin_tokens_file: cannot read {path}: {exc.strerror}"
                ) from None
            except UnicodeDecodeError:
                raise ConfigError(
                    f"config: http.admin_tokens_file: {path} is not UTF-8 text"
                ) from None
            entries += parse_tokens(text, f"admin tokens file {path}")
        return cls(entries)

    def authenticate(self, authorization: str | None) -> Operator:
        """The operator for an ``Authorization: Bearer <token>`` value, or Unauthenticated."""
        if authorization is None:
            raise Unauthenticated(cause=Cause.NO_CREDENTIAL)
        token = bearer_token(authorization)
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: Operator | None = None
        for entry in self._entries:  # no early exit: every comparison runs
            if hmac.compare_digest(digest, entry.digest):
                found = entry.operator
        if found is None:
            raise Unauthenticated(cause=Cause.UNKNOWN_OR_REVOKED)
        return found


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m corem_ingress.adapters.http token",
        description="Print a new operator token (keep it secret) and its config line (hash only).",
    )
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    try:
        check_tenant_id(args.tenant)
    except InvalidArgument as exc:
        parser.error(exc.message)
    if args.name is not None and not _NAME_RE.fullmatch(args.name):
        parser.error("--name must match [A-Za-z0-9._-]{1,64}")
    token = generate_token()
    line = f"{args.tenant}:{hash_token(token)}"
    if args.name:
        line += f":{args.name}"
    sys.stdout.write(f"token={token}\nline={line}\n")
    return 0
