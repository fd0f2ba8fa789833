"""`topomirror bench flows --quick` end to end: the adaptive node decides new flows while a TCP stream runs."""

from __future__ import annotations

from tests.conftest import require_lab_host
from topomirror.benchmarks import flows


def test_quick_flows_bench_decides_the_offered_new_flows_while_the_stream_runs() -> None:
    require_lab_host()
    result = flows.run(rate=2000, quick=True, seconds=2.0, name="tt-flows")
    loaded = [t for t in result["trials"] if t["mode"] == "with_flows"]  # type: ignore[union-attr]
    assert loaded and loaded[0]["generator_errors"] == 0
    offered = float(result["new_flows_per_s_offered"])  # type: ignore[arg-type]
    decided = float(result["new_flows_per_s_decided"])  # type: ignore[arg-type]
    assert offered >= 1900, f"the generator offered only {offered} new flows/s"
    assert decided >= 0.8 * offered, f"the node decided {decided} of {offered} new flows/s"
    assert float(result["baseline_gbps"]) > 0.01 and float(result["with_flows_gbps"]) > 0.01, result  # type: ignore[arg-type]
    # The control carried the same packets on one flow: the node assigned it one flow id, not thousands.
    [control] = [t for t in result["trials"] if t["mode"] == "same_flow"]  # type: ignore[union-attr]
    assert float(control["gbps"]) > 0.01 and control["flow_ids"] <= 2, control
    # The floor's datagrams go past the nodes: h1's node sees none of its new flows.
    [floor] = [t for t in result["trials"] if t["mode"] == "underlay"]  # type: ignore[union-attr]
    assert float(floor["gbps"]) > 0.01 and floor["flow_ids"] <= 2 and floor["generator_sent"] > 1000, floor
    assert all(t["timer_errors"] == 0 for t in loaded), "a node timer failed under the new-flow load"
