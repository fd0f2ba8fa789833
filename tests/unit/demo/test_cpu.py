"""The demo's reading of the machine's CPU (steal time beside every policy run)."""

from __future__ import annotations

import pytest

from topomirror.demo.runner import cpu_shares, cpu_times

STAT = "cpu  {} 0 {} {} {} 0 {} {} 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"


def test_steal_and_idle_are_shares_of_all_cpu_time_between_two_readings() -> None:
    before = cpu_times(STAT.format(100, 50, 1000, 0, 10, 0))
    after = cpu_times(STAT.format(300, 150, 1500, 100, 30, 300))
    # deltas: user 200, system 100, idle 500, iowait 100, softirq 20, steal 300: 1,220 in all
    assert cpu_shares(before, after) == {"idle_pct": round(100 * 600 / 1220, 1),
                                         "steal_pct": round(100 * 300 / 1220, 1)}
    assert cpu_shares(after, after) == {"idle_pct": 0.0, "steal_pct": 0.0}


def test_this_machines_counters_read_and_a_wrong_file_is_refused() -> None:
    now = cpu_times()
    assert len(now) >= 8 and all(x >= 0 for x in now)
    with pytest.raises(ValueError, match="/proc/stat"):
        cpu_times("intr 1 2 3\n")


def test_the_verdict_says_whether_the_machine_was_quiet_for_the_uncongested_ratio() -> None:
    from topomirror.demo.runner import verdict

    def summary(p99: float, extra: float, steal: float | None) -> dict[str, float | None]:
        return {"rpc_p99_ms": p99, "extra_bytes_pct": extra, "cpu_steal_pct": steal}

    result = {"uncongested": summary(4.0, 0.0, 1.0),
              "policies": {"off": summary(1200.0, 0.0, 2.0), "always": summary(5.0, 90.0, 1.0),
                           "reactive": summary(70.0, 6.0, 1.0), "predictive": summary(6.0, 10.0, 2.0)}}
    out = verdict(result)
    assert out["predictive_p99_over_uncongested"] == 1.5 and out["quiet_machine_for_the_ratio"] is True
    result["uncongested"]["cpu_steal_pct"] = 28.3  # the reference run lost a quarter of the CPU
    assert verdict(result)["quiet_machine_for_the_ratio"] is False
    result["uncongested"]["cpu_steal_pct"] = None  # an older run without the reading
    assert verdict(result)["quiet_machine_for_the_ratio"] is False
