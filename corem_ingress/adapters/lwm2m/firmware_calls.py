"""Firmware update, the operator's side (admin API and CLI): upload an image, start a
campaign for a list of devices, view it.

Starting a campaign writes one job per device (``store/firmware.py``) and hands each to the
node holding the device's session (``Lwm2mRouter.start_firmware``), which drives it
(``firmware_agent.py``). A device that is not registered, or whose registration announced
no object 5, gets a job that failed at once (so the campaign view counts it).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.core.identity import check_device_id
from corem_ingress.lwm2m.firmware import (
    FirmwareJob,
    JobStatus,
    Method,
    campaign_counts,
    check_image,
    check_label,
    new_token,
)
from corem_ingress.store.firmware import FirmwareStore
from corem_ingress.store.lwm2m import Lwm2mRouter, Lwm2mStore
from corem_ingress.store.registry import Registry

#: Devices one campaign may name.
MAX_CAMPAIGN_DEVICES = 1000


class FirmwareCalls:
    def __init__(
        self,
        registry: Registry,
        store: Lwm2mStore,
        router: Lwm2mRouter,
        firmware: FirmwareStore,
        *,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._store = store
        self._router = router
        self._fw = firmware
        self._max_bytes = max_bytes
        self._clock = clock

    async def upload(self, tenant_id: str, name: str, version: str, data: bytes) -> dict[str, Any]:
        check_label(name, "name")
        check_label(version, "version")
        sha256 = check_image(data, self._max_bytes)
        image = await self._fw.put_image(tenant_id, name, version, data, sha256)
        return image.to_json()

    async def images(self, tenant_id: str) -> dict[str, Any]:
        return {"images": [i.to_json() for i in await self._fw.images(tenant_id)]}

    async def start(
        self, tenant_id: str, image_id: str, device_ids: Sequence[object], method: object
    ) -> dict[str, Any]:
        if method not in ("pull", "push"):
            raise InvalidArgument("method is pull or push")
        if not device_ids or len(device_ids) > MAX_CAMPAIGN_DEVICES:
            raise InvalidArgument(f"device_ids is a list of 1..{MAX_CAMPAIGN_DEVICES} device ids")
        ids: list[str] = []
        for d in device_ids:
            if not isinstance(d, str):
                raise InvalidArgument("device_ids is a list of device ids")
            ids.append(check_device_id(d))
        if len(set(ids)) != len(ids):
            raise InvalidArgument("a device is named twice")
        await self._fw.image(tenant_id, image_id)  # NotFound for another tenant's
        for d in ids:
            await self._registry.get_device(tenant_id, d)  # NotFound: not the tenant's
        how = Method(method)
        now = self._clock()
        campaign_id = "fc_" + secrets.token_hex(12)
        jobs: list[FirmwareJob] = []
        holders: dict[str, str] = {}
        for d in ids:
            job = FirmwareJob(
                "fj_" + secrets.token_hex(12),
                campaign_id,
                tenant_id,
                d,
                image_id,
                how,
                JobStatus.PENDING,
                now,
                token=new_token() if how is Method.PULL else "",
            )
            reg = await self._store.get_by_device(d)
            if reg is None or reg.tenant_id != tenant_id:
                job = job.failed("the device has no LwM2M registration", now)
            elif not any(o.object_id == 5 for o in reg.objects.objects):
                job = job.failed("the device announced no Firmware Update object (5)", now)
            else:
                holders[job.job_id] = reg.node_id
            jobs.append(job)
        await self._fw.create_campaign(tenant_id, image_id, how, jobs)
        for job_id, node_id in holders.items():
            await self._router.start_firmware(node_id, job_id)
        return await self.campaign(tenant_id, campaign_id)

    async def campaign(self, tenant_id: str, campaign_id: str) -> dict[str, Any]:
        record, jobs = await self._fw.campaign(tenant_id, campaign_id)
        return {
            "campaign_id": campaign_id,
            "image_id": record["image_id"],
            "method": record["method"],
            "created_at": record["created_at"],
            "counts": campaign_counts(jobs),
            "jobs": [j.view() for j in jobs],
        }


__all__ = ["MAX_CAMPAIGN_DEVICES", "FirmwareCalls"]
