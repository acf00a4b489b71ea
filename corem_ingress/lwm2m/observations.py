"""Server-side Observe bookkeeping for one node: which token observes which path of which
registration, and whether a notification is fresh (RFC 7641 3.4). Pure, time passed in.

The CoAP glue adds an observation when it sends an Observe request (``operations.observe``)
with a fresh token, matches each notification's token here, feeds fresh ones to
``Lwm2mDeviceService.notification``, and drops a device's observations when its
registration is replaced, de-registered or its credential revoked.
"""

from __future__ import annotations

from dataclasses import dataclass

from corem_ingress.core.errors import AlreadyExists, InvalidArgument
from corem_ingress.lwm2m.model import Lwm2mPath
from corem_ingress.lwm2m.operations import DeviceRequest, Operation

#: RFC 7641 3.4: sequence numbers are 24-bit; an older notification is stale unless 128 s passed.
_SEQ_HALF = 1 << 23
_FRESHNESS_S = 128.0


def is_fresher(v1: int, t1: float, v2: int, t2: float) -> bool:
    """Whether notification (v2, t2) is newer than (v1, t1) under RFC 7641's rule."""
    return (
        (v1 < v2 and v2 - v1 < _SEQ_HALF)
        or (v1 > v2 and v1 - v2 > _SEQ_HALF)
        or (t2 > t1 + _FRESHNESS_S)
    )


@dataclass
class Observation:
    token: bytes
    registration_id: str
    device_id: str
    request: DeviceRequest
    started_at: float
    last_seq: int | None = None
    last_at: float | None = None

    @property
    def path(self) -> Lwm2mPath:
        return self.request.path


class ObservationTable:
    def __init__(self) -> None:
        self._by_token: dict[bytes, Observation] = {}
        self._by_device: dict[str, dict[Lwm2mPath, bytes]] = {}

    def __len__(self) -> int:
        return len(self._by_token)

    def add(
        self,
        token: bytes,
        registration_id: str,
        device_id: str,
        request: DeviceRequest,
        *,
        now: float,
    ) -> Observation:
        if request.operation is not Operation.OBSERVE:
            raise InvalidArgument("only Observe requests are tracked")
        if not 1 <= len(token) <= 8:
            raise InvalidArgument("a CoAP token is 1-8 bytes")
        if token in self._by_token:
            raise AlreadyExists("token already in use")
        if request.path in self._by_device.get(device_id, {}):
            raise AlreadyExists(f"{request.path} is already observed")
        obs = Observation(token, registration_id, device_id, request, now)
        self._by_token[token] = obs
        self._by_device.setdefault(device_id, {})[request.path] = token
        return obs

    def get(self, token: bytes) -> Observation | None:
        return self._by_token.get(token)

    def for_path(self, device_id: str, path: Lwm2mPath) -> Observation | None:
        """The observation to cancel for Cancel-Observe (it must reuse this token)."""
        token = self._by_device.get(device_id, {}).get(path)
        return None if token is None else self._by_token[token]

    def notification(self, token: bytes, seq: int | None, *, now: float) -> Observation | None:
        """The observation a notification belongs to, or None (unknown token: answer RST;
        stale: drop). ``seq`` is the Observe option value (None for the final response)."""
        obs = self._by_token.get(token)
        if obs is None:
            return None
        if seq is not None:
            last_seq, last_at = obs.last_seq, obs.last_at
            if (
                last_seq is not None
                and last_at is not None
                and not is_fresher(last_seq, last_at, seq, now)
            ):
                return None
            obs.last_seq, obs.last_at = seq, now
        return obs

    def remove(self, token: bytes) -> Observation | None:
        obs = self._by_token.pop(token, None)
        if obs is not None:
            paths = self._by_device.get(obs.device_id, {})
            paths.pop(obs.path, None)
            if not paths:
                self._by_device.pop(obs.device_id, None)
        return obs

    def remove_device(self, device_id: str) -> list[Observation]:
        """Forget every observation of a device (replaced or gone registration, revocation)."""
        tokens = list(self._by_device.pop(device_id, {}).values())
        return [self._by_token.pop(t) for t in tokens]

    def remove_registration(self, registration_id: str) -> list[Observation]:
        tokens = [t for t, o in self._by_token.items() if o.registration_id == registration_id]
        return [o for t in tokens if (o := self.remove(t)) is not None]


__all__ = ["Observation", "ObservationTable", "is_fresher"]
