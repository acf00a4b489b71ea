"""Server-side Observe bookkeeping for one node: which token observes which path of which
registration over which session, who wants it, and whether a notification is fresh
(RFC 7641 3.4). Pure, time passed in.

* Every observation belongs to one registration and one session: it dies with either
  (De-register, a new Register of the device, expiry, the session ending). A device that
  registers again never inherits an observation of its previous registration.
* One CoAP observation per (registration, path), shared by its owners: the automatic
  feed of the tenant's configured paths (``Owner.AUTO``) and operators (``Owner.OPERATOR``).
  A client keeps one observation per path and server (Wakaama replaces the token of a
  second Observe of the same path), so the two are reference-counted rather than sent
  twice: an operator's Cancel-Observe only removes the operator's interest, and the
  observation is cancelled at the device only when no owner is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from corem_ingress.core.errors import AlreadyExists, InvalidArgument
from corem_ingress.lwm2m.model import Lwm2mPath
from corem_ingress.lwm2m.operations import DeviceRequest, Operation

#: RFC 7641 3.4: sequence numbers are 24-bit; an older notification is stale unless 128 s passed.
_SEQ_HALF = 1 << 23
ObserveKey = tuple[Lwm2mPath, tuple[Lwm2mPath, ...]]
_FRESHNESS_S = 128.0


def is_fresher(v1: int, t1: float, v2: int, t2: float) -> bool:
    """Whether notification (v2, t2) is newer than (v1, t1) under RFC 7641's rule."""
    return (
        (v1 < v2 and v2 - v1 < _SEQ_HALF)
        or (v1 > v2 and v1 - v2 > _SEQ_HALF)
        or (t2 > t1 + _FRESHNESS_S)
    )


class Owner(StrEnum):
    """Who wants an observation kept."""

    #: The tenant's configured paths, observed after every Register / Update.
    AUTO = "auto"
    #: An operator's Observe (admin API, CLI).
    OPERATOR = "operator"


@dataclass
class Observation:
    token: bytes
    registration_id: str
    device_id: str
    #: The session the Observe was sent over (its notifications come only on it).
    session_id: str
    request: DeviceRequest
    started_at: float
    owners: set[Owner] = field(default_factory=set)
    last_seq: int | None = None
    last_at: float | None = None

    @property
    def path(self) -> Lwm2mPath:
        return self.request.path


class ObservationTable:
    def __init__(self) -> None:
        self._by_token: dict[bytes, Observation] = {}
        #: registration -> observe key (a path, or a composite's paths) -> token.
        self._by_registration: dict[str, dict[ObserveKey, bytes]] = {}

    def __len__(self) -> int:
        return len(self._by_token)

    def add(
        self,
        token: bytes,
        registration_id: str,
        device_id: str,
        session_id: str,
        request: DeviceRequest,
        owner: Owner,
        *,
        now: float,
    ) -> Observation:
        if request.operation not in (Operation.OBSERVE, Operation.OBSERVE_COMPOSITE):
            raise InvalidArgument("only Observe requests are tracked")
        if not 1 <= len(token) <= 8:
            raise InvalidArgument("a CoAP token is 1-8 bytes")
        if token in self._by_token:
            raise AlreadyExists("token already in use")
        if request.observe_key in self._by_registration.get(registration_id, {}):
            raise AlreadyExists(f"{request.path} is already observed")
        obs = Observation(token, registration_id, device_id, session_id, request, now, {owner})
        self._by_token[token] = obs
        self._by_registration.setdefault(registration_id, {})[request.observe_key] = token
        return obs

    def get(self, token: bytes) -> Observation | None:
        return self._by_token.get(token)

    def for_path(self, registration_id: str, path: Lwm2mPath) -> Observation | None:
        """The registration's observation of ``path`` (a Cancel-Observe reuses its token)."""
        return self.for_key(registration_id, (path, ()))

    def for_key(self, registration_id: str, key: ObserveKey) -> Observation | None:
        """The registration's observation of ``key`` (``DeviceRequest.observe_key``: a path,
        or the paths of an Observe-Composite)."""
        token = self._by_registration.get(registration_id, {}).get(key)
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

    def release(self, token: bytes, owner: Owner) -> Observation | None:
        """``owner`` no longer wants the observation; returns it when nobody does any more
        (it is then removed: cancel it at the device), None while others still want it."""
        obs = self._by_token.get(token)
        if obs is None:
            return None
        obs.owners.discard(owner)
        if obs.owners:
            return None
        return self.remove(token)

    def remove(self, token: bytes) -> Observation | None:
        obs = self._by_token.pop(token, None)
        if obs is not None:
            paths = self._by_registration.get(obs.registration_id, {})
            paths.pop(obs.request.observe_key, None)
            if not paths:
                self._by_registration.pop(obs.registration_id, None)
        return obs

    def _remove_where(self, keep: Callable[[Observation], bool]) -> list[Observation]:
        gone = [o for o in self._by_token.values() if not keep(o)]
        return [o for o in gone if self.remove(o.token) is not None]

    def remove_registration(self, registration_id: str) -> list[Observation]:
        """De-register, replaced or expired registration: its observations are void."""
        return self._remove_where(lambda o: o.registration_id != registration_id)

    def remove_session(self, session_id: str) -> list[Observation]:
        """The session ended or the registration moved to another session."""
        return self._remove_where(lambda o: o.session_id != session_id)

    def remove_device_except(self, device_id: str, registration_id: str) -> list[Observation]:
        """A new registration of the device: every observation of its older ones goes,
        even of a registration that expired unseen (Redis dropped it)."""
        return self._remove_where(
            lambda o: o.device_id != device_id or o.registration_id == registration_id
        )


__all__ = ["Observation", "ObservationTable", "Owner", "is_fresher"]
