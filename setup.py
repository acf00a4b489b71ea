"""Build: the pure package (pyproject.toml), plus the hot modules compiled with mypyc.

The modules are listed in ``corem_ingress/compiled.py`` (``COMPILED_MODULES``). Nothing
here can make an install fail: with ``COREM_NO_COMPILE=1``, without mypyc or a C
compiler, or when a compile fails, the install keeps the pure-Python modules and prints
one line saying so (and why). See docs/architecture.md, "Compiled modules".
"""

from __future__ import annotations

import ast
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
TAG = "corem_ingress build:"


def compiled_modules() -> list[str]:
    """``COMPILED_MODULES`` from corem_ingress/compiled.py, read without importing it."""
    tree = ast.parse((HERE / "corem_ingress" / "compiled.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "COMPILED_MODULES":
            return list(ast.literal_eval(node.value))  # type: ignore[arg-type]
    raise SystemExit(f"{TAG} COMPILED_MODULES not found in corem_ingress/compiled.py")


def say(message: str) -> None:
    # stderr, and flushed: pip shows a build backend's stderr with -v; the line is also in
    # the build log, and a failed compile must be seen.
    print(f"{TAG} {message}", file=sys.stderr, flush=True)


def no_compile_reason() -> str | None:
    if os.environ.get("COREM_NO_COMPILE", "").strip() not in ("", "0"):
        return "COREM_NO_COMPILE is set"
    if sys.implementation.name != "cpython":
        return f"mypyc needs CPython, not {sys.implementation.name}"
    return None


class MypycBuildExt(build_ext):
    """Compiles the listed modules when the build runs (not when setup.py is merely
    evaluated: pip evaluates it several times per install); falls back to pure on failure."""

    _fallback: str | None = None

    def finalize_options(self) -> None:
        # The mypyc extensions replace the placeholder before setuptools prepares them.
        if self.distribution.ext_modules and no_compile_reason() is None:
            try:
                self.distribution.ext_modules = self._mypyc_extensions()
            # mypy reports type errors with SystemExit (e.g. an isolated build env without the
            # broker's dependencies): that is a failed compile too, never a failed install.
            except (Exception, SystemExit) as exc:  # any failure: install pure instead
                self._fail(exc)
        super().finalize_options()

    def run(self) -> None:
        self._remove_stray_extensions()
        if self._fallback is None and self.extensions:
            try:
                super().run()
                say(f"compiled {len(compiled_modules())} modules with mypyc")
                return
            except (Exception, SystemExit) as exc:  # any failure: install pure instead
                self._remove_partial_outputs()
                self._fail(exc)
        self.extensions = []
        self.distribution.ext_modules = []
        say(f"installing the pure-Python modules only: {self._fallback}")

    def _fail(self, exc: BaseException) -> None:
        if os.environ.get("COREM_COMPILE_VERBOSE"):
            traceback.print_exc()
        if isinstance(exc, SystemExit):
            # mypy's type check failed: in pip's isolated build env the broker's
            # dependencies are missing (their types are unknown).
            self._fallback = (
                "mypyc's type check failed (an isolated build env lacks the dependencies: "
                "install them, then pip install --no-build-isolation)"
            )
        else:
            self._fallback = f"mypyc compile failed ({type(exc).__name__}: {exc})".replace(
                "\n", " "
            )
        self.distribution.ext_modules = []
        self.extensions = []

    def _mypyc_extensions(self) -> list[Extension]:
        try:
            from mypyc.build import mypycify
        except ImportError as exc:
            raise RuntimeError(f"mypyc is not installed: {exc}") from None
        if shutil.which(os.environ.get("CC", "cc").split()[0]) is None:
            raise RuntimeError("no C compiler (cc) on PATH")
        paths = [str(Path(*name.split(".")).with_suffix(".py")) for name in compiled_modules()]
        # In an isolated build env the broker's dependencies (redis, cryptography) are not
        # installed: their types are then Any, which compiles to the same behaviour.
        options = ["--ignore-missing-imports", "--config-file", str(HERE / "pyproject.toml")]
        exts: list[Extension] = mypycify(
            options + paths, opt_level="3", group_name="corem_ingress._compiled"
        )
        return exts

    def _remove_stray_extensions(self) -> None:
        # An editable install's source tree keeps the .so files of earlier builds: one of a
        # module no longer listed, or any after a failed compile, would still be imported.
        if not (self.inplace or getattr(self, "editable_mode", False)):
            return
        keep = {
            (HERE / self.get_ext_filename(self.get_ext_fullname(ext.name))).resolve()
            for ext in self.extensions
        }
        for path in (HERE / "corem_ingress").rglob("*.so"):
            if path.resolve() not in keep:
                path.unlink()

    def _remove_partial_outputs(self) -> None:
        # A module shim without the shared library it calls would fail to import: remove
        # whatever this build wrote, in build_lib and (editable/inplace) in the source tree.
        for ext in self.extensions:
            for base in (self.build_lib, str(HERE)):
                built = Path(base, self.get_ext_filename(self.get_ext_fullname(ext.name)))
                if built.exists():
                    built.unlink()


def ext_modules() -> list[Any]:
    # A placeholder so setuptools runs build_ext (and tags the wheel per platform); the
    # real extensions are made in MypycBuildExt.run.
    reason = no_compile_reason()
    if reason is not None:
        say(f"installing the pure-Python modules only: {reason}")
        return []
    return [Extension("corem_ingress._compiled__mypyc", sources=[])]


setup(ext_modules=ext_modules(), cmdclass={"build_ext": MypycBuildExt})
