"""corem_ingress: the CORE-M multi-protocol IoT ingress broker."""

from corem_ingress import compiled as _compiled

__version__ = "0.1.0"

# Before any compiled module is imported: COREM_PURE=1 picks their .py (compiled.py).
_compiled.install()
