"""Regenerate the reference table of docs/configuration.md from corem_ingress/config.py.

    .venv/bin/python scripts/gen_config_doc.py          # rewrite the file
    .venv/bin/python scripts/gen_config_doc.py --check  # exit 1 if it is out of date

Descriptions come from the ``#:`` comments above each field; defaults from the dataclasses.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corem_ingress import config  # noqa: E402

DOC = ROOT / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED REFERENCE -->"
END = "<!-- END GENERATED REFERENCE -->"


def field_comments() -> dict[tuple[str, str], str]:
    source = (ROOT / "corem_ingress" / "config.py").read_text()
    lines = source.splitlines()
    out: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                comment: list[str] = []
                i = stmt.lineno - 2
                while i >= 0 and lines[i].strip().startswith("#:"):
                    comment.insert(0, lines[i].strip()[2:].strip())
                    i -= 1
                out[(node.name, stmt.target.id)] = " ".join(comment)
    return out


def rows() -> list[str]:
    comments = field_comments()
    env = {path: name for name, path in config.env_names().items()}
    out = ["| key | env | default | meaning |", "|---|---|---|---|"]

    def walk(obj: object, prefix: tuple[str, ...]) -> None:
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, (*prefix, f.name))
                continue
            path = (*prefix, f.name)
            default = repr(value) if value != "" else '""'
            text = comments.get((type(obj).__name__, f.name), "").replace("|", "\\|")
            out.append(f"| `{'.'.join(path)}` | `{env[path]}` | `{default}` | {text} |")

    walk(config.Config(), ())
    return out


def render() -> str:
    current = DOC.read_text()
    head, _, rest = current.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + BEGIN + "\n" + "\n".join(rows()) + "\n" + END + tail


def main() -> int:
    new = render()
    if "--check" in sys.argv:
        if new != DOC.read_text():
            print("docs/configuration.md is out of date: run scripts/gen_config_doc.py")
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
