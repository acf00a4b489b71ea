"""Fixtures for operations tests: real broker processes (``node_on``, the in-process node on
any Redis URL, is in tests/conftest.py)."""

from __future__ import annotations

from tests.ops.brokers import brokers, pki  # noqa: F401  (fixtures)
