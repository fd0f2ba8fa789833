"""`bench flows` verdicts from its trials (pure: the lab runs are the e2e test's business)."""

from __future__ import annotations

from topomirror.benchmarks.flows import summarise


def _trials(base: float, loaded: float, control: float, decided: float) -> list[dict[str, object]]:
    common = {"offered_flows_per_s": 4999.6, "decided_flows_per_s": decided, "analysis_dropped": 0}
    return [{"mode": "baseline", "gbps": base}, {"mode": "with_flows", "gbps": loaded, **common},
            {"mode": "same_flow", "gbps": control, **common, "decided_flows_per_s": 0.1}]


def test_decisions_alone_are_judged_against_the_same_packets_on_one_flow() -> None:
    result = summarise(_trials(0.25, 0.16, 0.17, 4999.6), rate=5000, seconds=5.0)
    assert result["throughput_drop_pct"] == 36.0 and result["verdict"] == "missed"
    assert result["decision_drop_pct"] == 5.9 and result["verdict_decisions_only"] == "met"


def test_a_node_that_decides_too_few_flows_misses_both() -> None:
    result = summarise(_trials(0.25, 0.25, 0.25, 4000.0), rate=5000, seconds=5.0)
    assert result["verdict"] == "missed" and result["verdict_decisions_only"] == "missed"


def test_quiet_figure_keeps_only_repetitions_whose_two_trials_ran_without_steal() -> None:
    noisy = _trials(0.25, 0.10, 0.20, 5000.0)  # 50 % drop, with steal
    for trial in noisy:
        trial["machine_steal_pct"] = 12.0
    calm = _trials(0.25, 0.19, 0.20, 5000.0)  # 5 % drop, quiet
    for trial in calm:
        trial["machine_steal_pct"] = 1.0
    result = summarise(noisy + calm, rate=5000, seconds=5.0)
    assert result["decision_drop_pct_per_repetition"] == [50.0, 5.0]
    assert result["quiet_repetitions"] == 1 and result["decision_drop_pct_quiet"] == 5.0
    # Trials without a steal reading (older results) count as not quiet.
    assert summarise(_trials(0.25, 0.19, 0.20, 5000.0), rate=5000, seconds=5.0)["decision_drop_pct_quiet"] is None


def test_underlay_floor_is_read_against_the_baseline_of_its_repetition() -> None:
    trials = _trials(0.25, 0.16, 0.17, 5000.0) + [{"mode": "underlay", "gbps": 0.2375}]
    trials += _trials(0.20, 0.16, 0.17, 5000.0) + [{"mode": "underlay", "gbps": 0.20}]
    result = summarise(trials, rate=5000, seconds=5.0)
    assert result["underlay_drop_pct_per_repetition"] == [5.0, 0.0]
    assert result["underlay_drop_pct"] == 2.5 and result["underlay_gbps"] == 0.2188
    assert summarise(_trials(0.25, 0.16, 0.17, 5000.0), rate=5000, seconds=5.0)["underlay_drop_pct"] is None
