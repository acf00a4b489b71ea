"""Firmware update (LwM2M object 5): the pure decisions.

* A job is one device's update within a campaign (one image, one delivery method, a list of
  devices). Its ``status`` follows what the device reports in /5/0/3 (State) and /5/0/5
  (Update Result), observed by the node holding its session: ``on_device_report`` says
  what the job becomes and whether the server must now Execute /5/0/2 (Update).
* Pull: the device is given a per-job URI (``pull_uri``) on the broker's DTLS port and
  fetches the image with Block2; push: the server writes /5/0/0 with Block1. Either way
  ``block_of`` cuts the image into RFC 7959 blocks.
* ``campaign_counts``: jobs per status, the campaign view.

No I/O: images and jobs live in Redis (``store/firmware.py``), CoAP in
``adapters/lwm2m/firmware.py``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import IntEnum, StrEnum
from typing import Any

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m.model import Lwm2mPath

PACKAGE = Lwm2mPath.of(5, 0, 0)
PACKAGE_URI = Lwm2mPath.of(5, 0, 1)
UPDATE = Lwm2mPath.of(5, 0, 2)
STATE = Lwm2mPath.of(5, 0, 3)
UPDATE_RESULT = Lwm2mPath.of(5, 0, 5)
#: The URI path segment the broker serves pulled images under (``/fw/<token>``).
PULL_SEGMENT = "fw"


class DeviceState(IntEnum):
    """/5/0/3."""

    IDLE = 0
    DOWNLOADING = 1
    DOWNLOADED = 2
    UPDATING = 3


#: /5/0/5 values (LwM2M 1.1 E.6).
UPDATE_RESULTS = {
    0: "initial",
    1: "firmware updated successfully",
    2: "not enough flash memory for the new firmware package",
    3: "out of RAM during downloading process",
    4: "connection lost during downloading process",
    5: "integrity check failure for new downloaded package",
    6: "unsupported package type",
    7: "invalid URI",
    8: "firmware update failed",
    9: "unsupported protocol",
}


class Method(StrEnum):
    PULL = "pull"
    PUSH = "push"


class JobStatus(StrEnum):
    #: Created; the node holding the device's session has not started it yet.
    PENDING = "pending"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    UPDATING = "updating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


class Action(StrEnum):
    #: Execute /5/0/2: the package is downloaded, the device may now apply it.
    EXECUTE_UPDATE = "execute_update"


@dataclass(frozen=True, slots=True)
class FirmwareJob:
    job_id: str
    campaign_id: str
    tenant_id: str
    device_id: str
    image_id: str
    method: Method
    status: JobStatus
    updated_at: float
    #: Pull: the secret path segment of the job's URI (``/fw/<token>``).
    token: str = ""
    device_state: int | None = None
    device_result: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "campaign_id": self.campaign_id,
            "tenant_id": self.tenant_id,
            "device_id": self.device_id,
            "image_id": self.image_id,
            "method": self.method.value,
            "status": self.status.value,
            "updated_at": self.updated_at,
            "token": self.token,
            "device_state": self.device_state,
            "device_result": self.device_result,
            "error": self.error,
        }

    def view(self) -> dict[str, Any]:
        """What an operator sees (never the pull token: it is the device's download key)."""
        out = self.to_json()
        del out["token"], out["tenant_id"]
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FirmwareJob:
        try:
            state, result = raw.get("device_state"), raw.get("device_result")
            return cls(
                str(raw["job_id"]),
                str(raw["campaign_id"]),
                str(raw["tenant_id"]),
                str(raw["device_id"]),
                str(raw["image_id"]),
                Method(raw["method"]),
                JobStatus(raw["status"]),
                float(raw["updated_at"]),
                str(raw.get("token", "")),
                None if state is None else int(state),
                None if result is None else int(result),
                raw.get("error"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument("malformed firmware job", reason=repr(exc)) from None

    def failed(self, error: str, now: float) -> FirmwareJob:
        return replace(self, status=JobStatus.FAILED, error=error, updated_at=now)


def on_device_report(
    job: FirmwareJob, *, state: int | None, result: int | None, now: float
) -> tuple[FirmwareJob, Action | None]:
    """The job after the device reported ``state`` (/5/0/3) and/or ``result`` (/5/0/5);
    the action the server takes (Execute /5/0/2 once, when the package is downloaded)."""
    new = replace(
        job,
        device_state=job.device_state if state is None else state,
        device_result=job.device_result if result is None else result,
        updated_at=now,
    )
    if job.status.final:  # the outcome stands; the device's values are still shown
        return new, None
    if result is not None and result >= 2:
        text = UPDATE_RESULTS.get(result, f"update result {result}")
        return replace(new, status=JobStatus.FAILED, error=text), None
    if result == 1 and job.status in (JobStatus.DOWNLOADED, JobStatus.UPDATING):
        return replace(new, status=JobStatus.SUCCEEDED), None
    if state == DeviceState.DOWNLOADING and job.status is JobStatus.PENDING:
        return replace(new, status=JobStatus.DOWNLOADING), None
    if state == DeviceState.DOWNLOADED and job.status in (JobStatus.PENDING, JobStatus.DOWNLOADING):
        return replace(new, status=JobStatus.DOWNLOADED), Action.EXECUTE_UPDATE
    if state == DeviceState.UPDATING and job.status is not JobStatus.UPDATING:
        return replace(new, status=JobStatus.UPDATING), None
    return new, None


def campaign_counts(jobs: Iterable[FirmwareJob]) -> dict[str, int]:
    """Jobs per status (every status named, 0 included)."""
    counts = {s.value: 0 for s in JobStatus}
    for job in jobs:
        counts[job.status.value] += 1
    return counts


# -- images and blocks ----------------------------------------------------------------------
_NAME_RE = re.compile(r"[A-Za-z0-9._+-]{1,64}")


def check_label(value: object, what: str) -> str:
    """An image name or version: 1..64 of ``A-Z a-z 0-9 . _ + -``."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise InvalidArgument(f"{what} is 1..64 characters of A-Z a-z 0-9 . _ + -")
    return value


def check_image(data: bytes, max_bytes: int) -> str:
    """The image's SHA-256 (hex); InvalidArgument when empty or over ``max_bytes``."""
    if not data:
        raise InvalidArgument("the firmware image is empty")
    if len(data) > max_bytes:
        raise InvalidArgument(f"the firmware image is over {max_bytes} bytes")
    return hashlib.sha256(data).hexdigest()


def szx_of(block_size: int) -> int:
    """RFC 7959 SZX of a block size (16 -> 0 ... 1024 -> 6)."""
    if block_size not in (16, 32, 64, 128, 256, 512, 1024):
        raise InvalidArgument("a block size is a power of two in 16..1024")
    return block_size.bit_length() - 5


def block_of(total: int, num: int, szx: int) -> tuple[int, int, bool]:
    """Block ``num`` of a ``total``-byte body in blocks of ``2**(szx+4)``: (start, end,
    more). InvalidArgument for a block past the end (the server answers 4.02 / 4.08)."""
    if not 0 <= szx <= 6 or num < 0:
        raise InvalidArgument("bad block option")
    size = 1 << (szx + 4)
    start = num * size
    if start >= total and not (start == 0 and total == 0):
        raise InvalidArgument("block past the end of the body")
    end = min(total, start + size)
    return start, end, end < total


def serving_szx(requested: int | None, largest: int) -> int:
    """The block size to answer a Block2 request with: the client's, at most ours."""
    return largest if requested is None else min(requested, largest)


def new_token() -> str:
    """The secret path segment of one pull job's URI."""
    return secrets.token_urlsafe(18)


def pull_uri(host: str, port: int, token: str) -> str:
    """``coaps://host:port/fw/<token>``: the image, on the broker's DTLS port."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"coaps://{host}:{port}/{PULL_SEGMENT}/{token}"


__all__ = [
    "PACKAGE",
    "PACKAGE_URI",
    "PULL_SEGMENT",
    "STATE",
    "UPDATE",
    "UPDATE_RESULT",
    "UPDATE_RESULTS",
    "Action",
    "DeviceState",
    "FirmwareJob",
    "JobStatus",
    "Method",
    "block_of",
    "campaign_counts",
    "check_image",
    "check_label",
    "new_token",
    "on_device_report",
    "pull_uri",
    "serving_szx",
    "szx_of",
]
