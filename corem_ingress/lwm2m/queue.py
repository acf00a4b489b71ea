"""Queue mode (LwM2M 1.1 6.5): requests for a sleeping device wait until it next talks.

Pure decisions, no Redis: whether a request is queued or sent now, the deadline an operator
may give it, how many a device may have waiting, and the record an operator fetches
(``GET /api/v1/lwm2m/requests/{request_id}``). ``store/lwm2m_queue.py`` keeps them in Redis.

A device registered with queue mode (``b=UQ`` / ``Q``) is *awake* for ``awake_s`` after each
request it sends (Register, Update, Send): the server may send it requests then (the
specification's MAX_TRANSMIT_WAIT, 93 s by default, as Leshan). Outside that window, or when
the session of its registration ended (it comes back over a new one), operator requests are
queued and go out, in order, when it next sends a request.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m.operations import DeviceRequest

#: How long a finished (or expired) request's record is kept to be fetched.
RESULT_KEEP_S = 3600


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    #: Requests a device may have waiting; one more is refused (429).
    max_per_device: int = 16
    #: Deadline of a queued request when the operator gives none (seconds).
    default_deadline_s: float = 3600.0
    #: Longest deadline an operator may give.
    max_deadline_s: float = 86400.0
    #: How long a queue-mode device counts as awake after a request it sent.
    awake_s: float = 93.0

    def deadline(self, given: object, now: float) -> float:
        """Unix time after which a queued request is dropped (``deadline_s`` from the operator,
        or the default); InvalidArgument outside (0, max_deadline_s]."""
        if given is None:
            return now + self.default_deadline_s
        if isinstance(given, bool) or not isinstance(given, int | float) or math.isnan(given):
            raise InvalidArgument("deadline_s is a number of seconds")
        if not 0 < given <= self.max_deadline_s:
            raise InvalidArgument(f"deadline_s must be in (0, {self.max_deadline_s:g}]")
        return now + float(given)


def goes_to_queue(queue_mode: bool, reachable: bool, awake: bool) -> bool:
    """Whether an operator's request waits in the queue (else it is sent now, or refused
    as today when the device is unreachable and not in queue mode)."""
    return queue_mode and not (reachable and awake)


class Status(StrEnum):
    QUEUED = "queued"
    #: Taken from the queue and sent to the device; its answer is awaited.
    SENT = "sent"
    DONE = "done"
    FAILED = "failed"
    #: The deadline passed before the device woke up.
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        return self in (Status.DONE, Status.FAILED, Status.EXPIRED)


def new_request_id() -> str:
    return "rq_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    request_id: str
    tenant_id: str
    device_id: str
    #: The operator's operation name (read, write, ...).
    operation: str
    request: DeviceRequest
    queued_at: float
    deadline: float
    status: Status = Status.QUEUED
    finished_at: float | None = None
    #: The interpreted answer (``operations.interpret(...).to_json()``) when done.
    result: Mapping[str, Any] | None = None
    #: ``{"code", "message"}`` when failed or expired.
    error: Mapping[str, Any] | None = None

    def due(self, now: float) -> bool:
        """Still worth sending (queued and before its deadline)."""
        return self.status is Status.QUEUED and now < self.deadline

    def ttl_s(self, now: float) -> int:
        """Seconds the record is kept from ``now``: until the deadline, then to be fetched."""
        return max(1, math.ceil(self.deadline - now) + RESULT_KEEP_S)

    def finished(
        self,
        status: Status,
        now: float,
        *,
        result: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> QueuedRequest:
        return replace(self, status=status, finished_at=now, result=result, error=error)

    def view(self, now: float) -> dict[str, Any]:
        """What an operator sees; a queued request past its deadline shows ``expired`` even
        before a node swept it."""
        status = self.status
        if status is Status.QUEUED and now >= self.deadline:
            status = Status.EXPIRED
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "device_id": self.device_id,
            "operation": self.operation,
            "path": str(self.request.path),
            "status": status.value,
            "queued_at": self.queued_at,
            "deadline": self.deadline,
            "finished_at": self.finished_at,
        }
        if self.result is not None:
            out["result"] = dict(self.result)
        if self.error is not None:
            out["error"] = dict(self.error)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "tenant_id": self.tenant_id,
            "device_id": self.device_id,
            "operation": self.operation,
            "request": self.request.to_json(),
            "queued_at": self.queued_at,
            "deadline": self.deadline,
            "status": self.status.value,
            "finished_at": self.finished_at,
            "result": None if self.result is None else dict(self.result),
            "error": None if self.error is None else dict(self.error),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> QueuedRequest:
        try:
            finished = raw.get("finished_at")
            return cls(
                str(raw["request_id"]),
                str(raw["tenant_id"]),
                str(raw["device_id"]),
                str(raw["operation"]),
                DeviceRequest.from_json(raw["request"]),
                float(raw["queued_at"]),
                float(raw["deadline"]),
                Status(raw["status"]),
                None if finished is None else float(finished),
                raw.get("result"),
                raw.get("error"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument("malformed queued request", reason=repr(exc)) from None


__all__ = [
    "RESULT_KEEP_S",
    "QueuePolicy",
    "QueuedRequest",
    "Status",
    "goes_to_queue",
    "new_request_id",
]
