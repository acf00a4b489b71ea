"""The object model in use: the shipped OMA definitions plus an operator's DDF folder.

``DEFAULT_MODEL`` holds the core objects 0-7 and 3303, read from the DDF XML files shipped
in ``corem_ingress/lwm2m/models/``. ``load_model(folder)`` adds every ``*.xml`` of an
operator's folder (``lwm2m.models_dir``), as Leshan's ``-m`` does; a file there may
redefine a shipped object (a newer version). Files are read once per folder.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m.ddf import parse_ddf
from corem_ingress.lwm2m.model import ObjectDef, ObjectModel

#: Most DDF files read from an operator's folder.
MAX_MODEL_FILES = 2000


def _shipped() -> list[ObjectDef]:
    out: list[ObjectDef] = []
    folder = resources.files("corem_ingress.lwm2m").joinpath("models")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".xml"):
            out += parse_ddf(entry.read_bytes(), source=f"shipped {entry.name}")
    return out


DEFAULT_MODEL = ObjectModel(_shipped())


def read_folder(folder: str | Path) -> list[ObjectDef]:
    """The objects of every ``*.xml`` in ``folder`` (not recursive); ``InvalidArgument``
    naming the file for anything unreadable or malformed."""
    path = Path(folder)
    if not path.is_dir():
        raise InvalidArgument(f"DDF folder {str(path)[:200]!r} is not a directory")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if len(files) > MAX_MODEL_FILES:
        raise InvalidArgument(f"DDF folder holds more than {MAX_MODEL_FILES} files")
    out: list[ObjectDef] = []
    seen: dict[int, str] = {}
    for file in files:
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"DDF {file.name}: unreadable ({exc.strerror})") from None
        for obj in parse_ddf(data, source=file.name):
            if obj.id in seen:
                raise InvalidArgument(f"DDF {file.name}: object {obj.id} is also in {seen[obj.id]}")
            seen[obj.id] = file.name
            out.append(obj)
    return out


@functools.lru_cache(maxsize=8)
def load_model(folder: str = "") -> ObjectModel:
    """The shipped objects plus those of ``folder`` ("" : the shipped ones only)."""
    if not folder:
        return DEFAULT_MODEL
    return DEFAULT_MODEL.with_objects(read_folder(folder))


__all__ = ["DEFAULT_MODEL", "MAX_MODEL_FILES", "load_model", "read_folder"]
