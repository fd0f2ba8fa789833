"""The demo's reading of the machine's CPU (steal time beside every policy run)."""

from __future__ import annotations

import pytest

from topomirror.demo.runner import cpu_shares, cpu_times

STAT = "cpu  {} 0 {} {} {} 0 {} {} 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"


def test_steal_and_idle_are_shares_of_all_cpu_time_between_two_readings() -> None:
    before = cpu_times(STAT.format(100, 50, 1000, 0, 10, 0))
    after = cpu_times(STAT.format(300, 150, 1500, 100, 30, 300))
    # deltas: user 200, system 100, idle 500, iowait 100, softirq 20, steal 300: 1,220 in all
    assert cpu_shares(before, after) == {"idle_pct": round(100 * 600 / 1220, 1), "steal_pct": round(100 * 300 / 1220, 1)}
    assert cpu_shares(after, after) == {"idle_pct": 0.0, "steal_pct": 0.0}


def test_this_machines_counters_read_and_a_wrong_file_is_refused() -> None:
    now = cpu_times()
    assert len(now) >= 8 and all(x >= 0 for x in now)
    with pytest.raises(ValueError, match="/proc/stat"):
        cpu_times("intr 1 2 3\n")
