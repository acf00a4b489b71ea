"""LwM2M, the pure part: no sockets, no Redis, no asyncio (docs/lwm2m.md).

``model`` (paths, object definitions), ``linkformat`` (RFC 6690, the object list),
``registration`` (Register/Update/De-register decisions), ``records`` / ``senml`` /
``tlv`` / ``content`` (content formats <-> one JSON shape), ``operations``
(device-management requests as data, answers interpreted), ``reporting`` (observe plan,
Send, uplinks), ``observations`` (Observe tokens), ``client_objects`` (the simulated
client's objects), ``service`` (ties them to a registration store and an uplink append).

The CoAP/DTLS adapter that runs them is ``corem_ingress.adapters.lwm2m``.
"""
