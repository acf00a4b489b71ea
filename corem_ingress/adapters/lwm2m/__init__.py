"""LwM2M server side (issue 6), built to plug into the CoAP/DTLS layer (docs/lwm2m.md).

Sans-I/O modules: ``model`` (paths, object definitions), ``linkformat`` (RFC 6690, the
object list), ``registration`` (Register/Update/De-register decisions), ``records`` /
``senml`` / ``tlv`` / ``content`` (content formats <-> one JSON shape), ``operations``
(device-management requests as data, answers interpreted), ``reporting`` (observe plan,
Send, uplinks), ``observations`` (Observe tokens), ``client_objects`` (the simulated
client). ``service`` ties them to a registration store and an uplink ``append``;
``coap`` translates aiocoap messages for the CoAP listener's ``mount``/``request``.
"""
