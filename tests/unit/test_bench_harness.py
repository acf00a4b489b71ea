"""The bench harness's arithmetic (bench/harness.py, bench/pyspy.py): medians, spreads,
ratios taken within each run, and the profile summary. Pure; the benches themselves are
run by ``make bench`` (``--quick`` for a smoke run), never by the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import harness, pyspy

pytestmark = pytest.mark.unit


def test_spread_is_median_min_max() -> None:
    assert harness.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3.0}
    assert harness.fmt_spread(harness.spread([10, 30, 20])) == "20.0 (10.0-30.0)"
    assert harness.fmt_spread(None) == "—"


def test_ratios_are_taken_within_each_run_then_summarised() -> None:
    runs = [
        {"ours": {"cpu": 40.0}, "peer": {"cpu": 10.0}},  # 4x
        {"ours": {"cpu": 30.0}, "peer": {"cpu": 10.0}},  # 3x
        {"ours": {"cpu": 60.0}, "peer": {"cpu": 30.0}},  # 2x (a slow run for both)
    ]
    out = harness.summarize_runs(runs, {"cpu": ("cpu", "ours", "peer")})
    assert out["ours"]["cpu"]["median"] == 40.0
    assert out["ratios"]["cpu"] == {"median": 3.0, "min": 2.0, "max": 4.0, "n": 3.0}
    # Not the ratio of the medians (40 / 10 = 4): a run's noise hits both sides of it.


def test_pinning_wraps_the_command_only_with_two_cpus_and_taskset() -> None:
    cmd = ["prog", "arg"]
    wrapped = harness.pinned(cmd, 0)
    if harness.can_pin():
        assert wrapped[-2:] == cmd and wrapped[1:3] == ["-c", "0"]
    else:
        assert wrapped == cmd


def test_profile_summary_separates_the_idle_loop() -> None:
    collapsed = "\n".join(
        [
            "main (a/cli.py:1);run (asyncio/base_events.py:2);select (selectors.py:3) 50",
            "main (a/cli.py:1);on_publish (mqtt/session.py:9);new (core/uplink.py:4) 30",
            "main (a/cli.py:1);on_publish (mqtt/session.py:10) 20",
        ]
    )
    text = pyspy.summarize(collapsed)
    assert text.startswith("50 busy samples")
    assert "60.0  new (core/uplink.py)" in text  # self share of the busy samples
    assert "100.0  on_publish (mqtt/session.py)" in text  # inclusive, lines merged


def test_before_tree_gets_the_compiled_modules_only_when_their_sources_match(
    tmp_path: Path,
) -> None:
    """``--before REV`` must not compare REV's pure hot modules with our compiled ones."""
    root = tmp_path

    def tree(name: str, codec_src: bytes) -> Path:
        pkg = root / name / "corem_ingress"
        (pkg / "mqtt").mkdir(parents=True)
        (pkg / "mqtt" / "codec.py").write_bytes(codec_src)
        return pkg

    ours = tree("ours", b"x = 1\n")
    (ours / "mqtt" / "codec.cpython-311-x86_64-linux-gnu.so").write_bytes(b"ELF")
    (ours / "_compiled__mypyc.cpython-311-x86_64-linux-gnu.so").write_bytes(b"ELF")
    same = tree("same", b"x = 1\n")
    harness._copy_compiled(ours, same, "rev")
    assert sorted(p.name for p in same.rglob("*.so")) == [
        "_compiled__mypyc.cpython-311-x86_64-linux-gnu.so",
        "codec.cpython-311-x86_64-linux-gnu.so",
    ]
    other = tree("other", b"x = 2\n")
    harness._copy_compiled(ours, other, "rev")
    assert not list(other.rglob("*.so"))  # REV runs pure (and the harness says so)
