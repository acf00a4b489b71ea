"""The compiled hot modules (mypyc) and their pure-Python fallback (corem_ingress/compiled.py).

Each check runs in a fresh interpreter: which file a module comes from is decided once, at
the package's import. ``make test`` runs the suite on the compiled build, ``make
test-pure`` (COREM_PURE=1) on the pure one; ``test_this_run_uses_the_build_it_claims``
proves each run tested what it says.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corem_ingress import compiled, metrics

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
_FILES = (
    "import json; from corem_ingress import compiled; import importlib;"
    "print(json.dumps({n: importlib.import_module(n).__file__ for n in compiled.COMPILED_MODULES}))"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COREM_PURE", "COREM_NO_COMPILE")}
    env.update(extra)
    return env


def _module_files(**extra: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", _FILES], env=_env(**extra), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    files: dict[str, str] = json.loads(out.stdout)
    return files


def _has_extension(path: str) -> bool:
    return any(path.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES)


def test_pure_switch_imports_every_listed_module_from_its_py() -> None:
    files = _module_files(COREM_PURE="1")
    assert sorted(files) == sorted(compiled.COMPILED_MODULES)
    for name, path in files.items():
        assert path.endswith(".py"), f"{name} came from {path} under COREM_PURE=1"
        assert Path(path).is_relative_to(ROOT / "corem_ingress") or "site-packages" in path


def test_default_build_imports_the_compiled_modules() -> None:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler on this machine: the install kept the pure-Python modules")
    files = _module_files()
    pure = [name for name, path in files.items() if not _has_extension(path)]
    assert not pure, (
        f"{pure} run from their .py although a C compiler is here: the install did not compile"
        " them (its log says why) or the source changed since; rebuild: pip install -e ."
    )


def test_this_run_uses_the_build_it_claims() -> None:
    """The suite's own process: pure under COREM_PURE (make test-pure), else compiled
    wherever a C compiler is (make test)."""
    if os.environ.get("COREM_PURE", "") not in ("", "0"):
        assert compiled.build() == "pure"
        assert compiled.why_pure() == "COREM_PURE is set"
    elif shutil.which(os.environ.get("CC", "cc")) is not None:
        assert compiled.build() == "compiled", compiled.module_kinds()
        assert compiled.why_pure() is None
    else:
        assert compiled.build() == "pure"


def test_version_command_says_which_build_runs() -> None:
    for extra, expected in (({"COREM_PURE": "1"}, "pure; COREM_PURE is set"), ({}, None)):
        out = subprocess.run(
            [sys.executable, "-c", "from corem_ingress.cli import main; main(['version'])"],
            env=_env(**extra),
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        first, *rest = out.stdout.splitlines()
        assert first.startswith("corem_ingress 0.1.0 (hot modules: ")
        if expected is not None:
            assert expected in first
        assert [line.split(":")[0].strip() for line in rest] == list(compiled.COMPILED_MODULES)


def test_build_info_metric_labels_the_build() -> None:
    metrics.build_info("0.1.0", "pure")
    metrics.build_info("0.1.0", "compiled")  # a second call replaces the first label set
    text = metrics.exposition().decode()
    assert 'corem_build_info{modules="compiled",version="0.1.0"} 1.0' in text
    assert 'modules="pure"' not in text


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"COREM_NO_COMPILE": "1"}, "COREM_NO_COMPILE is set"),
        ({"CC": "/nonexistent/cc"}, "mypyc compile failed (RuntimeError: no C compiler"),
    ],
)
def test_build_without_compiling_succeeds_and_says_why(
    env: dict[str, str], reason: str, tmp_path: Path
) -> None:
    """What pip runs (setup.py build_ext), into a scratch directory: no compile, exit 0,
    one line saying the pure modules are installed and why, and no extension written."""
    dirs = ["--build-lib", str(tmp_path / "lib"), "--build-temp", str(tmp_path / "tmp")]
    out = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", *dirs],
        cwd=ROOT,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"corem_ingress build: installing the pure-Python modules only: {reason}" in out.stderr
    assert not list(tmp_path.rglob("*.so"))
