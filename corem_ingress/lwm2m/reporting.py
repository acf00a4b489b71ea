"""Information reporting: what to observe after registration, and notifications / Send
(``POST /dp``) turned into uplink envelopes (transport "lwm2m"). Pure.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from corem_ingress.core.errors import InvalidArgument, NotFound
from corem_ingress.core.uplink import Transport, Uplink, UplinkKind
from corem_ingress.lwm2m.content import CF_SENML_CBOR, CF_SENML_JSON, Record, decode
from corem_ingress.lwm2m.linkformat import ObjectList
from corem_ingress.lwm2m.model import Lwm2mPath, ObjectModel
from corem_ingress.lwm2m.objects import DEFAULT_MODEL
from corem_ingress.lwm2m.registration import MethodNotAllowed, Registration

DP = "dp"


def paths_to_observe(configured: Iterable[str], objects: ObjectList) -> list[Lwm2mPath]:
    """The tenant's configured paths (e.g. ["/3/0", "/3303"]) that the client announced.

    Raises InvalidArgument for a configured path that is not a path (a config error).
    """
    out: list[Lwm2mPath] = []
    for text in configured:
        path = Lwm2mPath.parse(text)
        if path.level == 0:
            raise InvalidArgument("the root path cannot be observed")
        if objects.has(path) and path not in out:
            out.append(path)
    return out


def parse_send(
    method: str,
    uri_path: Sequence[str],
    content_format: int | None,
    payload: bytes,
    *,
    now: float,
    model: ObjectModel = DEFAULT_MODEL,
) -> list[Record]:
    """LwM2M 1.1 Send: ``POST /dp`` with SenML JSON or CBOR; returns the records (4.00 if bad)."""
    if tuple(uri_path) != (DP,):
        raise NotFound("no such resource")
    if method != "POST":
        raise MethodNotAllowed("Send is POST /dp")
    if content_format not in (CF_SENML_JSON, CF_SENML_CBOR):
        raise InvalidArgument("Send takes SenML JSON (110) or SenML CBOR (112)")
    records = decode(payload, content_format, Lwm2mPath(), now=now, model=model)
    if not records:
        raise InvalidArgument("Send carried no values")
    return records


def uplink(
    registration: Registration,
    records: Sequence[Record],
    *,
    source: str,
    path: Lwm2mPath | None,
    now: float,
) -> Uplink:
    """The uplink envelope of one notification (``source`` "notify", ``path`` observed) or
    Send (``source`` "send", ``path`` None). Payload::

        {"endpoint", "registration_id", "source", "path", "records": [<record JSON>...]}
    """
    if source not in ("notify", "send"):
        raise InvalidArgument("source is notify or send")
    return Uplink(
        tenant_id=registration.tenant_id,
        device_id=registration.device_id,
        transport=Transport.LWM2M,
        kind=UplinkKind.TELEMETRY,
        payload={
            "endpoint": registration.endpoint,
            "registration_id": registration.registration_id,
            "source": source,
            "path": None if path is None else str(path),
            "records": [r.to_json() for r in records],
        },
        received_at=now,
        message_id=uuid.uuid4().hex,
        payload_encoding="json",
    )


__all__ = ["DP", "parse_send", "paths_to_observe", "uplink"]
