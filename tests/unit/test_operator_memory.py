"""The operator's process-level memory settings: malloc arenas and the trim of freed memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from slipway.engine import operator_main


@pytest.mark.parametrize("raw, expected", [("60", 60.0), ("0", 0.0), (" 1 ", 1.0), ("86400", 86400.0)])
def test_the_trim_interval_takes_whole_and_zero_seconds(monkeypatch: pytest.MonkeyPatch,
                                                         raw: str, expected: float) -> None:
    monkeypatch.setenv("SLIPWAY_MALLOC_TRIM_SECONDS", raw)
    assert operator_main.malloc_trim_seconds() == expected


def test_the_trim_interval_defaults_to_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLIPWAY_MALLOC_TRIM_SECONDS", raising=False)
    assert operator_main.malloc_trim_seconds() == 60.0


@pytest.mark.parametrize("raw", ["-1", "0.5", "nan", "inf", "1e9", "soon", ""])
def test_an_unusable_trim_interval_stops_the_operator_saying_why(
        monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("SLIPWAY_MALLOC_TRIM_SECONDS", raw)
    with pytest.raises(SystemExit, match="SLIPWAY_MALLOC_TRIM_SECONDS=.*must be 0"):
        operator_main.malloc_trim_seconds()


@pytest.mark.parametrize("raw", ["0", "-2", "two"])
def test_an_unusable_arena_count_stops_the_operator_saying_why(
        monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("SLIPWAY_MALLOC_ARENAS", raw)
    with pytest.raises(SystemExit, match="SLIPWAY_MALLOC_ARENAS=.*above 0"):
        operator_main.limit_malloc_arenas()


def test_no_trimmer_thread_when_trimming_is_off() -> None:
    assert operator_main.start_malloc_trimmer(0) is None


# In a process of its own: 300 MiB of freed strings of the size the cache holds, and the RSS
# before and after one trim.
TRIM_PROGRAM = textwrap.dedent("""
    import sys
    from slipway.engine import operator_main

    def rss_anon_mib():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024

    operator_main.limit_malloc_arenas()
    held = [("x" * 4000) + str(i) for i in range(75_000)]
    kept = held[::100]
    del held
    before = rss_anon_mib()
    trimmed = operator_main.trim_malloc()
    after = rss_anon_mib()
    print(trimmed, round(before), round(after), len(kept))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_a_trim_gives_freed_memory_back_to_the_system() -> None:
    out = subprocess.run([sys.executable, "-c", TRIM_PROGRAM], check=True, capture_output=True,
                         text=True, env={**os.environ, "SLIPWAY_MALLOC_ARENAS": "2"},
                         timeout=120).stdout.split()
    trimmed, before, after = out[0] == "True", int(out[1]), int(out[2])
    assert trimmed
    assert before >= 250, f"the freed strings should still count before the trim: {before} MiB"
    assert after <= before - 200, f"RssAnon {before} MiB before the trim, {after} MiB after"
