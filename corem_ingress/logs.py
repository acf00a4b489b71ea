"""Structured logs: JSON in production, readable in dev; secrets never reach the output.

Redaction is a last line of defence: code must not log secrets in the first place,
but any event field whose name says "secret" and any string that looks like an
API key is masked before rendering.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_FIELDS = re.compile(
    r"(api_key|apikey|password|passwd|secret|psk$|^psk|private_key|kek|token|authorization)",
    re.IGNORECASE,
)
_API_KEY_RE = re.compile(r"sk_live_[A-Za-z0-9_-]{8,}")
_PEM_KEY_RE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
)
REDACTED = "[redacted]"
# Fields that merely name a secret's handle, not the secret.
_ALLOWED = frozenset({"key_id", "psk_identity", "token_name", "credential_id"})


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        value = _API_KEY_RE.sub("sk_live_" + REDACTED, value)
        return _PEM_KEY_RE.sub(REDACTED, value)
    return value


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key not in _ALLOWED and _SECRET_FIELDS.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure(fmt: str = "json", level: str = "info", node_id: str | None = None) -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=lvl, force=True)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if node_id:
        processors.append(_add_node(node_id))
    processors += [
        structlog.processors.format_exc_info,
        redact,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        # Looked up at each call: whatever sys.stderr is now (tests swap it).
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)


def _add_node(node_id: str) -> Any:
    def add(_l: Any, _m: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event_dict.setdefault("node", node_id)
        return event_dict

    return add
