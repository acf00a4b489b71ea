"""Which hot modules run compiled (mypyc) and the ``COREM_PURE`` switch back to their .py.

``setup.py`` compiles the modules of ``COMPILED_MODULES`` with mypyc at install time (unless
``COREM_NO_COMPILE=1``, or when mypyc or the C compiler is missing or fails: then the
install keeps the pure-Python modules and says so). Python's import system prefers an
extension module to the ``.py`` beside it, so a compiled build imports the ``.so`` files.

``COREM_PURE=1`` in the environment makes this process import the ``.py`` files even where
``.so`` files are installed (the pure-Python build, what ``make test-pure`` runs the suite
on). It is read once, when the package is imported (``corem_ingress/__init__.py``), before
any listed module is. A ``.so`` older than its ``.py`` (the source was edited after the
last build of an editable install) is never loaded either: the ``.py`` is, with a warning
to rebuild (``pip install -e .``).

Not compiled itself: it must run before the compiled modules load.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

#: The modules setup.py compiles (it reads this tuple from this file's text: keep it a
#: literal). Each must stay mypyc-compatible: typed, no monkeypatching, no subclass of
#: its classes outside this list.
COMPILED_MODULES: Final = (
    "corem_ingress.adapters.mqtt.codec",
    "corem_ingress.adapters.mqtt.properties",
    "corem_ingress.adapters.dtls.records",
    "corem_ingress.adapters.dtls.cid",
    "corem_ingress.adapters.coap.codec",
)

#: Environment switch: import the pure-Python modules even where compiled ones exist.
PURE_ENV: Final = "COREM_PURE"

_PACKAGE_DIR: Final = Path(__file__).resolve().parent
_forced_pure = False
_stale: list[str] = []


def _source_path(name: str) -> Path:
    return _PACKAGE_DIR.joinpath(*name.split(".")[1:]).with_suffix(".py")


def _extension_path(name: str) -> Path | None:
    source = _source_path(name)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the listed modules' ``.py`` before the path finder finds their ``.so``."""

    def __init__(self, names: frozenset[str]) -> None:
        self._names = names

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._names:
            return None
        return importlib.util.spec_from_file_location(fullname, _source_path(fullname))


def _env_true(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no")


def install(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Called once by ``corem_ingress/__init__.py``, before any listed module is imported."""
    global _forced_pure
    _forced_pure = _env_true(environ.get(PURE_ENV))
    if _forced_pure:
        names = frozenset(COMPILED_MODULES)
    else:
        for name in COMPILED_MODULES:
            ext = _extension_path(name)
            source = _source_path(name)
            if ext is not None and source.exists() and source.stat().st_mtime > ext.stat().st_mtime:
                _stale.append(name)
        # All or none: one module from source beside its compiled neighbours would work,
        # but "compiled" would then mean two things.
        names = frozenset(COMPILED_MODULES) if _stale else frozenset()
        if _stale:
            warnings.warn(
                f"corem_ingress: compiled modules older than their source ({', '.join(_stale)}):"
                " using the pure-Python modules; rebuild with `pip install -e .`",
                RuntimeWarning,
                stacklevel=2,
            )
    if names:
        sys.meta_path.insert(0, _SourceFinder(names))


def module_kinds() -> dict[str, str]:
    """Each listed module -> "compiled" or "pure", from the file it was imported from
    (imports them: the broker imports them all anyway)."""
    kinds = {}
    for name in COMPILED_MODULES:
        module = importlib.import_module(name)
        compiled = not str(getattr(module, "__file__", "")).endswith(".py")
        kinds[name] = "compiled" if compiled else "pure"
    return kinds


def build() -> str:
    """The build in use: "compiled" (every listed module is), "pure" (none is) or "mixed"."""
    kinds = set(module_kinds().values())
    return kinds.pop() if len(kinds) == 1 else "mixed"


def why_pure() -> str | None:
    """Why this process runs the pure modules, or None if it does not (or cannot say)."""
    if _forced_pure:
        return f"{PURE_ENV} is set"
    if _stale:
        return "the compiled modules are older than their source (rebuild)"
    if all(_extension_path(name) is None for name in COMPILED_MODULES):
        return "this install has no compiled modules (COREM_NO_COMPILE, or the compile failed)"
    return None
