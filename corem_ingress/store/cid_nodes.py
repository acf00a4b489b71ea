"""Where each node takes forwarded DTLS Connection ID records, and the key that
authenticates them (``adapters/dtls/cluster.py``; keys in docs/redis-keys.md)."""

from __future__ import annotations

import secrets
from typing import Any

from corem_ingress.store.keys import KeySchema

Address = tuple[str, int]


class CidNodeDirectory:
    def __init__(self, redis: Any, keys: KeySchema) -> None:
        self._r = redis
        self._keys = keys

    async def forward_key(self) -> bytes:
        """The shared HMAC key: the first node sets it (``SET NX``), every node reads it."""
        await self._r.set(self._keys.cid_forward_key, secrets.token_hex(32), nx=True)
        value = await self._r.get(self._keys.cid_forward_key)
        text = value.decode() if isinstance(value, bytes) else str(value)
        return bytes.fromhex(text)

    async def register(self, tag: bytes, addr: Address) -> str | None:
        """Announce this node's tag; -> the address another node had under it (a tag
        collision, or this node's previous run), if any."""
        key = self._keys.cid_nodes
        previous = await self._r.hget(key, tag.hex())
        await self._r.hset(key, tag.hex(), f"{addr[0]}:{addr[1]}")
        if previous is None:
            return None
        text = previous.decode() if isinstance(previous, bytes) else str(previous)
        return None if text == f"{addr[0]}:{addr[1]}" else text

    async def unregister(self, tag: bytes, addr: Address) -> None:
        key = self._keys.cid_nodes
        current = await self._r.hget(key, tag.hex())
        text = current.decode() if isinstance(current, bytes) else current
        if text == f"{addr[0]}:{addr[1]}":  # not a successor's entry
            await self._r.hdel(key, tag.hex())

    async def all(self) -> dict[bytes, Address]:
        """Every registered node: tag -> address (malformed entries skipped)."""
        out: dict[bytes, Address] = {}
        for raw_tag, raw_addr in (await self._r.hgetall(self._keys.cid_nodes)).items():
            tag = raw_tag.decode() if isinstance(raw_tag, bytes) else str(raw_tag)
            text = raw_addr.decode() if isinstance(raw_addr, bytes) else str(raw_addr)
            host, _, port = text.rpartition(":")
            try:
                out[bytes.fromhex(tag)] = (host, int(port))
            except ValueError:
                continue
        return out
