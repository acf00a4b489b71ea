"""Helpers for operators and maintainers of the HTTP adapter.

python -m corem_ingress.adapters.http token --tenant T [--name N]
    a new operator token (keep it secret) and its config line (its SHA-256 only)
python -m corem_ingress.adapters.http openapi > docs/openapi.json
    the OpenAPI document, exactly as served
"""

from __future__ import annotations

import sys

from corem_ingress.adapters.http import openapi, operators


def main(argv: list[str]) -> int:
    if argv[:1] == ["token"]:
        return operators.main(argv[1:])
    if argv == ["openapi"]:
        return openapi.main()
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
