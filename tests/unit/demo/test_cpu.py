"""The demo's reading of the machine's CPU (steal time beside every policy run)."""

from __future__ import annotations

import pytest

from topomirror.lab.machine import cpu_shares, cpu_times

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
    assert out["always_p99_over_uncongested"] == 1.25  # the bound the run left to any mirroring policy
    assert out["quiet_moments_always_p99_over_uncongested"] is None  # no quiet-moment figures in this result
    result["uncongested"]["cpu_steal_pct"] = 28.3  # the reference run lost a quarter of the CPU
    assert verdict(result)["quiet_machine_for_the_ratio"] is False
    result["uncongested"]["cpu_steal_pct"] = None  # an older run without the reading
    assert verdict(result)["quiet_machine_for_the_ratio"] is False
    assert "predictive_p99_over_uncongested_load" not in verdict(result)  # a quick run has one reference
    result["uncongested_load"] = summary(5.0, 0.0, 1.0)  # the whole load, nothing congested
    out = verdict(result)
    assert out["uncongested_load_p99_over_uncongested"] == 1.25
    assert out["predictive_p99_over_uncongested_load"] == 1.2 and out["always_p99_over_uncongested_load"] == 1.0
    assert out["predictive_p99_over_uncongested"] == 1.5, "the target's own ratio is unchanged"


def test_the_tables_list_the_references_the_run_has_then_the_policies() -> None:
    from topomirror.demo.report import table_rows

    policies = {"off": {"rpc_p99_ms": 9.0}, "predictive": {"rpc_p99_ms": 2.0}}
    quick = {"uncongested": {"rpc_p99_ms": 1.0}, "policies": policies}
    assert [name for name, _ in table_rows(quick)] == ["uncongested", "off", "predictive"]
    default = {**quick, "uncongested_load": {"rpc_p99_ms": 1.5}}
    assert [name for name, _ in table_rows(default)] == ["uncongested", "uncongested_load", "off", "predictive"]


def test_the_steal_sampler_cuts_the_workload_into_windows_of_the_machines_steal() -> None:
    import time

    from topomirror.demo.runner import StealSampler

    # user, nice, system, idle, iowait, irq, softirq, steal: every other reading adds steal
    readings = iter([[100 * i, 0, 0, 100 * i, 0, 0, 0, 100 * (i // 2)] for i in range(200)])
    with StealSampler(every=0.01, read=lambda: next(readings)) as sampler:
        deadline = time.monotonic() + 10
        while len(sampler.windows) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    windows = sampler.windows
    assert len(windows) >= 3
    assert all(a < b for a, b, _ in windows)
    assert all(w[1] == v[0] for w, v in zip(windows, windows[1:], strict=False)), "windows tile the workload"
    assert {pct for _, _, pct in windows} == {0.0, 33.3}
    assert 0 < sampler.shares()["steal_pct"] < 33.3, "the whole run, from the first reading to stop()"


def test_quiet_latencies_leave_out_the_requests_a_steal_window_touched() -> None:
    from topomirror.demo.runner import quiet_latencies

    windows = [(0.0, 0.25, 1.0), (0.25, 0.5, 30.0), (0.5, 0.75, 0.0), (0.75, 1.0, 4.9)]
    timeline = [(0.0, 10.0),    # 0.10-0.11 s: quiet
                (0.1, 200.0),   # 0.20-0.40 s: runs into the noisy window
                (0.3, 5.0),     # inside the noisy window
                (0.5, 20.0),    # 0.60-0.62 s: quiet
                (0.8, 500.0)]   # ends after the last window: nothing known, left out
    assert quiet_latencies(timeline, windows, offset_s=0.1) == [10.0, 20.0]
    assert quiet_latencies(timeline, windows, offset_s=0.1, threshold_pct=50.0) == [10.0, 200.0, 5.0, 20.0]
    assert quiet_latencies(timeline, [], offset_s=0.0) == []


def test_the_policies_take_turns_at_each_place_in_the_run() -> None:
    from topomirror.demo.runner import POLICIES, policy_order

    orders = [policy_order(POLICIES, rotation) for rotation in range(4)]
    assert orders[0] == POLICIES and policy_order(POLICIES, 4) == POLICIES
    for place in range(4):
        assert sorted(order[place] for order in orders) == sorted(POLICIES), "each policy at each place once"
    assert all(sorted(order) == sorted(POLICIES) for order in orders)
    assert policy_order((), 3) == ()
