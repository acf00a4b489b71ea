"""LwM2M server on the CoAP/DTLS port (docs/lwm2m.md): the adapter around the pure
``corem_ingress.lwm2m`` modules.

``coap`` translates aiocoap messages for the CoAP listener's ``mount``/``request``;
``server`` binds registrations to DTLS sessions and routes operator requests;
``nosec`` is the dev-only plain-UDP listener; ``operator`` is the admin API/CLI side.
"""
