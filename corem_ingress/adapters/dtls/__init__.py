"""DTLS 1.2 server (PSK and X.509 on one UDP port) on pyOpenSSL memory BIOs.

``server.DtlsServer`` is the sans-I/O core, ``transport.DtlsTransport`` the
asyncio datagram protocol that only moves bytes; ``events`` what the core reports;
``records`` the pure record framing; all private binding use is in ``_binding``.
"""
