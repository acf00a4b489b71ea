"""What the simulated devices observed: latencies, deliveries, errors. Pure (no I/O, no clock)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no samples."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(rank) - 1]


@dataclass
class FleetStats:
    connect_latency_s: list[float] = field(default_factory=list)
    send_latency_s: list[float] = field(default_factory=list)
    revoke_to_disconnect_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    connected: int = 0
    delivered: int = 0
    attempted: int = 0
    revoked: int = 0
    #: Devices whose credential was revoked but that never saw the session end.
    revoked_still_connected: int = 0

    def error(self, cause: str) -> None:
        self.errors[cause] += 1

    def summary(self, elapsed_s: float) -> dict[str, object]:
        def pcts(values: list[float], scale: float, names: tuple[float, ...]) -> dict[str, object]:
            return {
                f"p{int(p)}": (
                    None if (v := percentile(values, p)) is None else round(v * scale, 3)
                )
                for p in names
            }

        return {
            "elapsed_s": round(elapsed_s, 3),
            "devices_connected": self.connected,
            "connect_latency_ms": pcts(self.connect_latency_s, 1000, (50, 95, 99)),
            "messages_attempted": self.attempted,
            "messages_delivered": self.delivered,
            "delivered_per_s": round(self.delivered / elapsed_s, 2) if elapsed_s > 0 else 0.0,
            "send_latency_ms": pcts(self.send_latency_s, 1000, (50, 95, 99)),
            "errors": dict(sorted(self.errors.items())),
            "revoked": self.revoked,
            "revoke_to_disconnect_ms": pcts(self.revoke_to_disconnect_s, 1000, (50, 99)),
            "revoked_still_connected": self.revoked_still_connected,
        }


def render_table(summary: dict[str, object]) -> str:
    """The final summary as an aligned two-column table."""
    rows: list[tuple[str, str]] = []
    for key, value in summary.items():
        if isinstance(value, dict):
            if not value:
                rows.append((key, "-"))
            for sub, v in value.items():
                rows.append((f"{key} {sub}", "-" if v is None else str(v)))
        else:
            rows.append((key, str(value)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
