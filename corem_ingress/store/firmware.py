"""Firmware images and update jobs in Redis.

Images are stored **in Redis, chunked** (``{P}:fw:img:<id>:<n>``, 64 KiB each, base64 as
the node's clients decode replies as text), not in a file store: every node must be able
to serve any image (a device pulls from the node holding its session, and sessions move),
and Redis is the only thing the nodes share; a file store would need a shared volume on
every node. Chunks keep each value small (no multi-megabyte GET blocking Redis); the image
is never on a hot path: a node reads it once per update into a bounded in-memory cache
(``adapters/lwm2m/firmware.py``) and serves blocks from there. The size limit is
``lwm2m.firmware_max_bytes``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from corem_ingress.core.errors import InvalidArgument, NotFound, Unavailable
from corem_ingress.lwm2m.firmware import FirmwareJob, Method
from corem_ingress.store.keys import KeySchema

CHUNK_BYTES = 64 * 1024
#: Campaigns and jobs are kept this long after their last change.
JOB_TTL_S = 30 * 86400


@dataclass(frozen=True, slots=True)
class FirmwareImage:
    image_id: str
    tenant_id: str
    name: str
    version: str
    size: int
    sha256: str
    chunks: int
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "name": self.name,
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
            "created_at": self.created_at,
        }


def _unavailable(exc: Exception) -> Unavailable:
    return Unavailable("firmware storage is unavailable", reason=str(exc))


class FirmwareStore:
    def __init__(
        self, redis: aioredis.Redis, keys: KeySchema, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._r: Any = redis  # decode_responses=True
        self._keys = keys
        self._clock = clock

    # -- images ---------------------------------------------------------------------------
    async def put_image(
        self, tenant_id: str, name: str, version: str, data: bytes, sha256: str
    ) -> FirmwareImage:
        image = FirmwareImage(
            "fw_" + secrets.token_hex(12),
            tenant_id,
            name,
            version,
            len(data),
            sha256,
            (len(data) + CHUNK_BYTES - 1) // CHUNK_BYTES,
            self._clock(),
        )
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                for n in range(image.chunks):
                    chunk = data[n * CHUNK_BYTES : (n + 1) * CHUNK_BYTES]
                    pipe.set(
                        self._keys.firmware_chunk(image.image_id, n),
                        base64.b64encode(chunk).decode(),
                    )
                pipe.hset(
                    self._keys.firmware_image(image.image_id),
                    mapping={
                        "tenant_id": tenant_id,
                        "name": name,
                        "version": version,
                        "size": image.size,
                        "sha256": sha256,
                        "chunks": image.chunks,
                        "created_at": repr(image.created_at),
                    },
                )
                pipe.zadd(self._keys.tenant_firmware(tenant_id), {image.image_id: image.created_at})
                await pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise _unavailable(exc) from None
        return image

    async def image(self, tenant_id: str, image_id: str) -> FirmwareImage:
        """The tenant's image; NotFound for another tenant's or an unknown one."""
        try:
            raw = await self._r.hgetall(self._keys.firmware_image(image_id))
        except redis.exceptions.RedisError as exc:
            raise _unavailable(exc) from None
        if not raw or raw.get("tenant_id") != tenant_id:
            raise NotFound("no such firmware image")
        return FirmwareImage(
            image_id,
            tenant_id,
            raw["name"],
            raw["version"],
            int(raw["size"]),
            raw["sha256"],
            int(raw["chunks"]),
            float(raw["created_at"]),
        )

    async def images(self, tenant_id: str, *, limit: int = 100) -> list[FirmwareImage]:
        try:
            ids = await self._r.zrevrange(self._keys.tenant_firmware(tenant_id), 0, limit - 1)
        except redis.exceptions.RedisError as exc:
            raise _unavailable(exc) from None
        out = []
        for image_id in ids:
            try:
                out.append(await self.image(tenant_id, image_id))
            except NotFound:
                continue
        return out

    async def load(self, image: FirmwareImage) -> bytes:
        """The image's bytes, checked against its SHA-256."""
        keys = [self._keys.firmware_chunk(image.image_id, n) for n in range(image.chunks)]
        try:
            chunks = await self._r.mget(keys) if keys else []
        except redis.exceptions.RedisError as exc:
            raise _unavailable(exc) from None
        if any(c is None for c in chunks):
            raise NotFound("the firmware image's data is gone")
        data = b"".join(base64.b64decode(c) for c in chunks)
        if hashlib.sha256(data).hexdigest() != image.sha256:
            raise Unavailable("the firmware image failed its integrity check")
        return data

    # -- campaigns and jobs ---------------------------------------------------------------
    async def create_campaign(
        self, tenant_id: str, image_id: str, method: Method, jobs: list[FirmwareJob]
    ) -> str:
        campaign_id = jobs[0].campaign_id
        record = {
            "campaign_id": campaign_id,
            "tenant_id": tenant_id,
            "image_id": image_id,
            "method": method.value,
            "created_at": self._clock(),
            "job_ids": [j.job_id for j in jobs],
        }
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.set(
                    self._keys.firmware_campaign(campaign_id),
                    json.dumps(record, separators=(",", ":")),
                    ex=JOB_TTL_S,
                )
                for job in jobs:
                    self._save(pipe, job)
                    if not job.status.final:
                        pipe.set(
                            self._keys.firmware_device_job(job.device_id), job.job_id, ex=JOB_TTL_S
                        )
                    if job.token:
                        pipe.set(self._keys.firmware_token(job.token), job.job_id, ex=JOB_TTL_S)
                await pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise _unavailable(exc) from None
        return campaign_id

    def _save(self, pipe: Any, job: FirmwareJob) -> None:
        pipe.set(
            self._keys.firmware_job(job.job_id),
            json.dumps(job.to_json(), separators=(",", ":")),
            ex=JOB_TTL_S,
        )

    async def save_job(self, job: FirmwareJob) -> None:
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                self._save(pipe, job)
                if job.status.final and job.token:
                    pipe.delete(self._keys.firmware_token(job.token))  # no more downloads
                await pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise _unavailable(exc) from None

    async def job(self, job_id: str) -> FirmwareJob | None:
        try:
            raw = await self._r.get(self._keys.firmware_job(job_id))
        except redis.exceptions.RedisError as exc:
            raise _unavailable(exc) from None
        if raw is None:
            return None
        try:
            return FirmwareJob.from_json(json.loads(raw))
        except (ValueError, InvalidArgument):
            return None

    async def job_for_device(self, device_id: str) -> FirmwareJob | None:
        try:
            job_id = await self._r.get(self._keys.firmware_device_job(device_id))
        except redis.exceptions.RedisError as exc:
            raise _unavailable(exc) from None
        return None if job_id is None else await self.job(job_id)

    async def job_for_token(self, token: str) -> FirmwareJob | None:
        try:
            job_id = await self._r.get(self._keys.firmware_token(token))
        except redis.exceptions.RedisError as exc:
            raise _unavailable(exc) from None
        return None if job_id is None else await self.job(job_id)

    async def campaign(
        self, tenant_id: str, campaign_id: str
    ) -> tuple[dict[str, Any], list[FirmwareJob]]:
        try:
            raw = await self._r.get(self._keys.firmware_campaign(campaign_id))
        except redis.exceptions.RedisError as exc:
            raise _unavailable(exc) from None
        if raw is None:
            raise NotFound("no such firmware campaign")
        record = json.loads(raw)
        if record.get("tenant_id") != tenant_id:
            raise NotFound("no such firmware campaign")
        jobs = [j for job_id in record["job_ids"] if (j := await self.job(job_id)) is not None]
        return record, jobs


__all__ = ["CHUNK_BYTES", "FirmwareImage", "FirmwareStore"]
