"""corem_ingress: the CORE-M multi-protocol IoT ingress broker."""

__version__ = "0.1.0"
