"""Per-device message rate limits and per-tenant connection limits, on this node.

Pure: no I/O, the clock is an argument. Both are per node: behind a load
balancer with N nodes, a tenant may hold up to N x ``max_per_tenant`` connections.

Adapters call::

    if not services.tenant_connections.acquire(identity.tenant_id):
        ...refuse the connection (counted)...
    ...
    services.tenant_connections.release(identity.tenant_id)   # when the session ends

    if not services.device_rate.allow(identity.device_id, now):
        ...refuse the message (HTTP 429, CoAP 4.29, MQTT: drop + no PUBACK / close)...
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored; starts full."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, now: float, cost: float = 1.0) -> bool:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class DeviceRateLimiter:
    """A token bucket per device (or any key), LRU-bounded. ``rate_per_s = 0``: unlimited."""

    def __init__(
        self, *, rate_per_s: float = 0.0, burst: int = 20, max_keys: int = 200_000
    ) -> None:
        if rate_per_s < 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate_per_s must be >= 0, burst >= 1, max_keys >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        #: Messages refused since creation.
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        if not self.enabled:
            return True
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket.full(self.rate_per_s, float(self.burst), now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                # An evicted device starts again with a full bucket: a bounded loss.
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        if bucket.take(now, cost):
            return True
        self.refused += 1
        return False

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)


class TenantConnections:
    """Live connections per tenant on this node. ``max_per_tenant = 0``: unlimited."""

    def __init__(self, *, max_per_tenant: int = 0) -> None:
        if max_per_tenant < 0:
            raise ValueError("max_per_tenant must be >= 0")
        self.max_per_tenant = max_per_tenant
        self._counts: dict[str, int] = {}
        #: The same tenants' connections on the other nodes, as last shared through Redis
        #: (store/limits_sync.py): the limit applies to the deployment, not to one node.
        self._others: dict[str, int] = {}
        #: Connections refused since creation.
        self.refused = 0

    def count(self, tenant_id: str) -> int:
        return self._counts.get(tenant_id, 0)

    def __len__(self) -> int:
        """Tenants with at least one connection (entries at 0 are removed: bounded)."""
        return len(self._counts)

    def local_counts(self) -> dict[str, int]:
        """This node's counts (what it shares with the others)."""
        return dict(self._counts)

    def set_others(self, counts: dict[str, int]) -> None:
        """The other nodes' counts per tenant (replaces the previous snapshot)."""
        self._others = {t: n for t, n in counts.items() if n > 0}

    def acquire(self, tenant_id: str) -> bool:
        """Take a slot for one more connection of ``tenant_id``; False: refuse it."""
        n = self._counts.get(tenant_id, 0)
        total = n + self._others.get(tenant_id, 0)
        if self.max_per_tenant and total >= self.max_per_tenant:
            self.refused += 1
            return False
        self._counts[tenant_id] = n + 1
        return True

    def release(self, tenant_id: str) -> None:
        """Give back a slot taken by acquire (extra releases are ignored)."""
        n = self._counts.get(tenant_id, 0)
        if n <= 1:
            self._counts.pop(tenant_id, None)
        else:
            self._counts[tenant_id] = n - 1
