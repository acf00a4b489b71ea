"""Transport adapters: bytes/sessions in, DeviceIdentity + Uplink out. No policy, no Redis here.

Each adapter package exposes ``build(services) -> Listener`` (``corem_ingress.services``);
app.py starts the configured ones.
"""

from __future__ import annotations

from typing import Protocol


class Listener(Protocol):
    name: str
    #: The bound port once started (the configured one, or the OS's pick for port 0).
    port: int

    async def start(self) -> None: ...

    async def stop(self, deadline: float) -> None:
        """Stop accepting, tell peers to go, finish in-flight work within ``deadline`` seconds."""
        ...
