"""Profiles of a running broker with py-spy (out of process): flame graph + text summary.

``with recording(pid, out_stem): ...`` samples ``pid`` while the block runs and writes
``out_stem.svg`` (py-spy's flame graph), ``out_stem.collapsed`` (its stacks) and
``out_stem.txt``: the functions with the largest share of samples, self and inclusive. py-spy is
a bench-only tool (``pip install py-spy``); without it the block runs unprofiled and a
note says so. Also ``python -m bench.pyspy STEM.collapsed`` re-summarises a saved file.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

RATE = 997  # samples/s, not a multiple of the loop's timers
#: Leaf frames of the loop itself: asyncio's waiting in epoll; uvloop's C loop (its waits
#: and its own C work together, as py-spy sees no frames under Runner.run there).
IDLE = ("EpollSelector.select", "select (", "poll (", "Runner.run (")


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def recording(pid: int, out_stem: Path) -> Iterator[None]:
    tool = _py_spy()
    if tool is None:
        print("py-spy not installed: no profile", file=sys.stderr)
        yield
        return
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    collapsed = out_stem.with_suffix(".collapsed")
    # Two samplers side by side (py-spy writes one format per run): the collapsed stacks
    # for the text summary, the SVG flame graph. --nonblocking: the broker is not stopped
    # per sample.
    procs = [
        subprocess.Popen(
            [tool, "record", "--pid", str(pid), "--rate", str(RATE), "--nonblocking",
             "--format", fmt, "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fmt, out in (("raw", collapsed), ("flamegraph", out_stem.with_suffix(".svg")))
    ]  # fmt: skip
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if collapsed.exists():
        out_stem.with_suffix(".txt").write_text(summarize(collapsed.read_text()))


def summarize(collapsed: str, top: int = 40) -> str:
    """Self and inclusive sample shares per function from ``a;b;c N`` lines."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = idle = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        # Threads are the first frame in py-spy's raw output ("process ..."/"thread ...").
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1].startswith(IDLE):  # the loop waiting for I/O: not work
            idle += n
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [
        f"{total} busy samples at {RATE}/s (shares below are of these; {idle} more samples "
        "were the loop itself: epoll waits, or uvloop's C loop)",
        "",
        "self %  function",
    ]
    lines += [f"{100 * n / total:6.1f}  {f}" for f, n in own.most_common(top)]
    lines += ["", "inclusive %  function"]
    lines += [f"{100 * n / total:6.1f}  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    """``func (path/to/module.py:123)`` → ``func (module.py)``: lines merged per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    mod = "/".join(parts[-2:]) if parts else path
    return f"{name} ({mod})" if path else name


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]).read_text()), end="")
