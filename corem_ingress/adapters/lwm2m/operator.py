"""Operator requests to a registered device, shared by the admin API and the CLI.

``OperatorCalls.call(tenant, device, operation, params)``: the device must belong to the
tenant (registry), have a live registration (Redis), then the request is built from the
operator's parameters, routed through Redis to the node holding the device's DTLS session
(``Lwm2mRouter``) and the device's answer interpreted (``operations.interpret``).

A device in queue mode that is asleep (``lwm2m/queue.py``) gets the request queued instead:
the answer is then ``{"status": "queued", "request_id": ...}`` (the admin API's 202), and the
result is fetched later (``queued``) or followed as an event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from corem_ingress.core.errors import InvalidArgument, NotFound, Unavailable
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.content import CF_SENML_CBOR, CF_SENML_JSON, CF_TEXT
from corem_ingress.lwm2m.model import ObjectModel
from corem_ingress.lwm2m.objects import DEFAULT_MODEL
from corem_ingress.lwm2m.operations import DeviceRequest, Operation
from corem_ingress.lwm2m.queue import QueuedRequest, QueuePolicy, new_request_id
from corem_ingress.lwm2m.records import Record
from corem_ingress.lwm2m.registration import Registration
from corem_ingress.store.lwm2m import Lwm2mRouter, Lwm2mStore
from corem_ingress.store.lwm2m_queue import Lwm2mQueue
from corem_ingress.store.registry import Registry

#: The operations operators call: every one the server models.
OPERATIONS = tuple(op.value for op in Operation)
#: Fields of an operation's parameters (admin API body, CLI options).
PARAM_FIELDS = frozenset(
    {
        "path",
        "paths",
        "values",
        "args",
        "accept",
        "replace",
        "timeout_s",
        "clear",
        "deadline_s",
        *ops.ATTRIBUTES,
    }
)
MAX_TIMEOUT_S = 60.0


def _accept(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise InvalidArgument("accept is a CoAP content format number (0..65535)")
    return value


def build_request(
    operation: str,
    reg: Registration,
    params: Mapping[str, Any],
    model: ObjectModel = DEFAULT_MODEL,
) -> DeviceRequest:
    """The device request for an operator's ``operation`` with ``params``; InvalidArgument
    for anything malformed (the path, values, arguments) or refused by the object model
    (not writable / executable, wrong type, out of range)."""
    unknown = set(params) - PARAM_FIELDS
    if unknown:
        raise InvalidArgument(f"unknown parameter: {sorted(unknown)[0]}")
    if operation in ops.COMPOSITE:
        return _composite(Operation(operation), reg, params, model)
    path = params.get("path")
    if not isinstance(path, str):
        raise InvalidArgument("path is required (e.g. /3/0/0)")
    root = reg.objects.root
    # No Accept from the operator: the format the client announced at registration.
    accept = ops.check_accept(_accept(params.get("accept")))
    if accept is None:
        accept = ops.preferred_format(reg)
    if operation == Operation.READ:
        return ops.read(path, accept=accept, root=root)
    if operation == Operation.OBSERVE:
        return ops.observe(path, accept=accept, root=root)
    if operation == Operation.CANCEL_OBSERVE:
        return ops.cancel_observe(path, accept=accept, root=root)
    if operation == Operation.DISCOVER:
        return ops.discover(path, root=root)
    if operation == Operation.EXECUTE:
        args = params.get("args", "")
        if not isinstance(args, str):
            raise InvalidArgument("args is text, e.g. 0='x',1")
        return ops.execute(path, args, root=root, model=model)
    if operation == Operation.DELETE:
        return ops.delete(path, root=root)
    if operation == Operation.CREATE:
        return ops.create(
            path,
            _records(params, model),
            content_format=ops.preferred_format(reg),
            root=root,
            model=model,
        )
    if operation == Operation.WRITE:
        records = _records(params, model)
        replace = params.get("replace", True)
        if not isinstance(replace, bool):
            raise InvalidArgument("replace is true (Write, PUT) or false (Partial Update)")
        cf = ops.preferred_format(reg)
        single = len(records) == 1 and str(records[0].path) == path
        if single and records[0].path.level == 3 and reg.version == "1.0":
            cf = CF_TEXT
        return ops.write(path, records, content_format=cf, replace=replace, root=root, model=model)
    if operation == Operation.WRITE_ATTRIBUTES:
        clear = params.get("clear", [])
        if not isinstance(clear, list) or not all(isinstance(c, str) for c in clear):
            raise InvalidArgument('clear is a list of attribute names, e.g. ["gt"]')
        return ops.write_attributes(
            path,
            **ops.attributes_from(params),  # type: ignore[arg-type]
            clear=clear,
            root=root,
            model=model,
        )
    raise NotFound("no such LwM2M operation")


def _composite(
    operation: Operation, reg: Registration, params: Mapping[str, Any], model: ObjectModel
) -> DeviceRequest:
    """Read-/Write-/Observe-Composite and its Cancel (LwM2M 1.1, SenML only)."""
    if reg.version == "1.0":
        raise InvalidArgument("composite operations need an LwM2M 1.1 client")
    root = reg.objects.root
    accept = _accept(params.get("accept"))
    if accept is None:  # the SenML the client announced (SenML JSON if it announced none)
        preferred = ops.preferred_format(reg)
        accept = preferred if preferred in (CF_SENML_CBOR, CF_SENML_JSON) else CF_SENML_JSON
    if operation is Operation.WRITE_COMPOSITE:
        if "paths" in params or "path" in params:
            raise InvalidArgument("write-composite takes values (each with its path), no path")
        return ops.write_composite(
            _records(params, model), content_format=accept, root=root, model=model
        )
    if "path" in params or "values" in params:
        raise InvalidArgument(f"{operation.value} takes paths (a list), no path or values")
    paths = params.get("paths")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise InvalidArgument('paths is a list of LwM2M paths, e.g. ["/3/0/0", "/3303/0"]')
    build = {
        Operation.READ_COMPOSITE: ops.read_composite,
        Operation.OBSERVE_COMPOSITE: ops.observe_composite,
        Operation.CANCEL_OBSERVE_COMPOSITE: ops.cancel_observe_composite,
    }[operation]
    return build(paths, accept=accept, root=root)


def _records(params: Mapping[str, Any], model: ObjectModel) -> list[Record]:
    values = params.get("values")
    if not isinstance(values, list) or not values or len(values) > 256:
        raise InvalidArgument("values is a list of 1..256 {path, value, type?} objects")
    return [Record.from_json(v, model=model) for v in values]


def timeout_of(params: Mapping[str, Any], default: float) -> float:
    value = params.get("timeout_s", default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument("timeout_s is a number of seconds")
    if not 0 < value <= MAX_TIMEOUT_S:
        raise InvalidArgument(f"timeout_s must be in (0, {MAX_TIMEOUT_S:g}]")
    return float(value)


class OperatorCalls:
    def __init__(
        self,
        registry: Registry,
        store: Lwm2mStore,
        router: Lwm2mRouter,
        *,
        default_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        queue: Lwm2mQueue | None = None,
        queue_policy: QueuePolicy | None = None,
        model: ObjectModel = DEFAULT_MODEL,
    ) -> None:
        self.model = model
        self._registry = registry
        self.store = store
        self._router = router
        self._timeout = default_timeout_s
        self._clock = clock
        self._queue = queue
        self._policy = queue_policy or QueuePolicy()

    async def registration(self, tenant_id: str, device_id: str) -> Registration:
        """The tenant's device's live registration; NotFound if none (or not the tenant's)."""
        await self._registry.get_device(tenant_id, device_id)
        reg = await self.store.get_by_device(device_id)
        if reg is None or reg.tenant_id != tenant_id:
            raise NotFound("the device has no LwM2M registration", reason="not registered")
        return reg

    async def call(
        self, tenant_id: str, device_id: str, operation: str, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        if operation not in OPERATIONS:
            raise NotFound("no such LwM2M operation")
        timeout = timeout_of(params, self._timeout)
        reg = await self.registration(tenant_id, device_id)
        request = build_request(operation, reg, params, self.model)
        self._policy.deadline(params.get("deadline_s"), 0.0)  # checked whatever the mode
        if reg.queue_mode and self._queue is not None:
            queued = await self._enqueue(reg, operation, request, params)
            if queued is not None:
                return queued
        if not reg.reachable:
            raise Unavailable(
                "the device is not reachable: the DTLS session of its registration ended "
                "(it is again after its next Update or Register)",
                reason="unreachable",
            )
        response = await self._router.call(reg, request, timeout_s=timeout)
        result = ops.interpret(request, response, now=self._clock(), model=self.model)
        out: dict[str, Any] = {
            "device_id": device_id,
            "registration_id": reg.registration_id,
            **result.to_json(self.model, root=reg.objects.root),
        }
        return out

    async def _enqueue(
        self,
        reg: Registration,
        operation: str,
        request: DeviceRequest,
        params: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """Queue the request if the device sleeps (or its session ended); None if it is awake."""
        assert self._queue is not None
        now = self._clock()
        item = QueuedRequest(
            new_request_id(),
            reg.tenant_id,
            reg.device_id,
            operation,
            request,
            now,
            self._policy.deadline(params.get("deadline_s"), now),
        )
        waiting = await self._queue.enqueue(
            item,
            max_per_device=self._policy.max_per_device,
            max_deadline_s=self._policy.max_deadline_s,
            even_if_awake=not reg.reachable,
        )
        if waiting is None:
            return None
        return {
            "device_id": reg.device_id,
            "registration_id": reg.registration_id,
            **item.view(now),
            "waiting": waiting,
        }

    async def queued(self, tenant_id: str, request_id: str) -> dict[str, Any]:
        """A queued request's state and, once finished, its result (NotFound if not the
        tenant's, or past its keeping time)."""
        if self._queue is None:
            raise NotFound("no such queued request")
        item = await self._queue.get(request_id)
        if item is None or item.tenant_id != tenant_id:
            raise NotFound("no such queued request")
        return item.view(self._clock())


__all__ = ["OPERATIONS", "OperatorCalls", "build_request", "timeout_of"]
