"""What every peer-beside-ours bench shares: core pinning, repeated runs, median and spread.

The rules of issue 18: a bench measures ours and its peer **in the same run**, the server
under test pinned to one core and the load generator to the other, at least three runs;
it reports each figure's median with its spread (min-max), and each ratio computed per run
(ours ÷ the peer's of the same run) then summarised the same way. ``--quick`` shrinks the
counts for a smoke run (not for figures).

Used by bench/mqtt.py and bench/http.py; bench/coap.py may use ``add_run_args``,
``pinned``, ``pin_self``, ``summarize_runs`` and ``export_rev`` the same way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: The server under test (ours and the peer, one after the other) runs on this core...
SERVER_CPU = 0
#: ...and the load generator (and Redis) on this one.
LOADGEN_CPU = 1
MIN_RUNS = 3


def taskset() -> str | None:
    """Path of ``taskset`` (util-linux), or None: then nothing is pinned (and we say so)."""
    return shutil.which("taskset")


def can_pin() -> bool:
    return taskset() is not None and _has_two()


def _has_two() -> bool:
    return (os.cpu_count() or 1) >= 2


def pinned(cmd: list[str], cpu: int = SERVER_CPU) -> list[str]:
    """``cmd`` run under ``taskset -c cpu`` (unchanged when pinning is not possible)."""
    tool = taskset()
    if tool is None or not _has_two():
        return cmd
    return [tool, "-c", str(cpu), *cmd]


def pin_self(cpu: int = LOADGEN_CPU) -> None:
    """Pin this process (and the children it starts from now on) to ``cpu``."""
    if _has_two():
        os.sched_setaffinity(0, {cpu})


def add_run_args(parser: argparse.ArgumentParser, *, default_runs: int = MIN_RUNS) -> None:
    parser.add_argument(
        "--runs",
        type=int,
        default=default_runs,
        help=f"measured runs, ours and the peer's each (default {default_runs}; "
        f"figures need >= {MIN_RUNS})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts: a smoke run, not figures"
    )


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median, min and max of a non-empty sample (n: its size)."""
    vals = [float(v) for v in values]
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": float(len(vals)),
    }


def summarize_runs(
    runs: list[dict[str, dict[str, float]]],
    ratios: dict[str, tuple[str, str, str]] | None = None,
) -> dict[str, Any]:
    """Per-run results ``[{side: {metric: value}}]`` → ``{side: {metric: spread}}`` plus
    ``ratios``: name → (metric, ours, peer), each computed within a run, then summarised.
    """
    out: dict[str, Any] = {}
    sides = sorted({side for run in runs for side in run})
    for side in sides:
        metrics = sorted({m for run in runs for m in run.get(side, {})})
        out[side] = {
            m: spread(run[side][m] for run in runs if m in run.get(side, {})) for m in metrics
        }
    if ratios:
        out["ratios"] = {}
        for name, (metric, ours, peer) in ratios.items():
            per_run = [
                run[ours][metric] / run[peer][metric]
                for run in runs
                if run.get(ours, {}).get(metric) and run.get(peer, {}).get(metric)
            ]
            if per_run:
                out["ratios"][name] = spread(per_run)
    return out


def fmt_spread(s: dict[str, float] | None, digits: int = 1, unit: str = "") -> str:
    """``median (min-max)``: the form every table of docs/benchmarks.md uses."""
    if not s:
        return "—"
    f: Callable[[float], str] = lambda v: f"{v:,.{digits}f}"  # noqa: E731
    return f"{f(s['median'])}{unit} ({f(s['min'])}-{f(s['max'])})"


def environment() -> dict[str, Any]:
    """What the reader needs to judge the figures: load, cores, whether pinning happened."""
    return {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "pinned": can_pin(),
        "server_cpu": SERVER_CPU,
        "loadgen_cpu": LOADGEN_CPU,
    }


def export_rev(rev: str, into: Path) -> Path:
    """The package tree of git revision ``rev`` under ``into`` (``--before REV``: the old
    broker measured in the same run; run it with ``PYTHONPATH=into`` and ``cwd=into``)."""
    root = Path(__file__).resolve().parents[1]
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", rev, "corem_ingress"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    _copy_compiled(root / "corem_ingress", into / "corem_ingress", rev)
    return into


def _copy_compiled(ours: Path, theirs: Path, rev: str) -> None:
    """This tree's mypyc-compiled modules, into the exported tree when their sources are the
    same there: ``git archive`` has no ``.so``, and without them REV would run its hot
    modules as pure Python while this tree runs them compiled (a bias in the comparison).
    If a source differs, REV runs pure, and says so."""
    built = sorted(p for p in ours.rglob("*.so") if p.is_file())
    if not built:
        return

    def source(tree: Path, so: Path) -> bytes | None:
        py = (tree / so.relative_to(ours)).with_name(so.name.split(".")[0] + ".py")
        return py.read_bytes() if py.exists() else None

    # The shared mypyc runtime (``*__mypyc*.so``) has no source of its own.
    if any(source(theirs, so) != source(ours, so) for so in built if "__mypyc" not in so.name):
        print(f"--before {rev}: compiled sources differ: it runs them pure", file=sys.stderr)
        return
    for so in built:
        shutil.copy2(so, theirs / so.relative_to(ours))  # keeps the mtime: newer than the .py
