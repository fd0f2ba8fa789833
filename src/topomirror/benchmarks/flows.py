"""`topomirror bench flows`: new-flow decisions per second against data-plane throughput (issue 5).

On the diamond lab, whose host nodes run the adaptive controller (policy predictive), h1's node
carries an iperf3 TCP stream to h2's overlay address. Trials alternate, side by side in one run:
- baseline: the stream alone;
- with_flows: the same while `topomirror.lab.flowgen` in h1 opens `rate` new UDP flows per second
  towards h2's overlay address (one datagram per new 5-tuple, open loop). Every one of them is a new
  flow for h1's node: `Node._new_flow` -> `controller.new_flow` + the analysis queue.
- same_flow: the control: the same datagrams at the same rate on one 5-tuple. On two shared cores
  every extra packet costs the stream (encapsulation, two node hops, the kernel), so
  `throughput_drop_pct` (against the baseline) mixes the cost of carrying `rate` packets/s with the
  cost of deciding `rate` new flows/s; `decision_drop_pct` (with_flows against same_flow) is the
  cost of the decisions alone.
- underlay: the floor: the same new flows at the same rate to h2's underlay address, so no node
  carries them (the generator, the kernel's hops and the sink only). `underlay_drop_pct` (against
  the baseline) is what `rate` datagrams/s cost the stream on this machine before topomirror
  does anything with them.
h1's node counts flow ids it assigned (`topomirror_flows_created` on /metrics); the count over the
stream's run gives the new flows/s it decided. The target: at least 5,000 decided flows/s while the
stream's throughput drops by at most 10 %.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from topomirror.api.client import fetch
from topomirror.lab.machine import QUIET_STEAL_PCT, cpu_shares, cpu_times
from topomirror.lab.plan import LabPlan, compile_lab
from topomirror.lab.realize import deploy, destroy
from topomirror.lab.registry import LabRegistry
from topomirror.lab.spec import load_lab
from topomirror.lab.traffic import TrafficError, in_node, iperf3_tcp
from topomirror.node.launch import api_socket

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "labs"
SRC, DST = "h1", "h2"
DST_OVERLAY = "172.16.2.1"
TARGET_FLOWS_PER_S = 5000
TARGET_MAX_DROP_PCT = 10.0
WARMUP_S = 2.5  # the controller forgets a flow after 2 s idle: its table is at its steady size by then
_CREATED = re.compile(r"^topomirror_flows_created_total (\S+)$", re.MULTILINE)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _node_counters(socket_path: Path, pid: int) -> dict[str, float]:
    status = fetch("/status", socket_path=socket_path, timeout=10)
    metrics = fetch("/metrics", socket_path=socket_path, timeout=10)
    match = _CREATED.search(metrics)
    if match is None:
        raise TrafficError("the node's /metrics has no topomirror_flows_created (an older node?)")
    return {"at": time.monotonic(), "cpu_s": _cpu_seconds(pid), "flow_ids": float(match.group(1)),
            "analysis_dropped": float(status["analysis_dropped"]), "flows_in_table": float(status["flows"]),
            "timer_errors": float(status["timer_errors"])}


def _trial(plan: LabPlan, socket_path: Path, pid: int, *, mode: str, rate: int, seconds: float,
           first_flow: int) -> dict[str, object]:
    """One iperf3 TCP run h1 -> h2 through the overlay: alone (`baseline`), with the flow generator
    opening new flows (`with_flows`) or sending as many datagrams on one flow (`same_flow`)
    through the overlay, or opening new flows on the underlay, past the nodes (`underlay`)."""
    if mode == "baseline":
        before = _node_counters(socket_path, pid)
        machine = cpu_times()
        gbps = iperf3_tcp(plan, SRC, DST, seconds=seconds, dst_address=DST_OVERLAY).bits_per_second / 1e9
        shares = cpu_shares(machine, cpu_times())
        after = _node_counters(socket_path, pid)
        return {"mode": "baseline", "gbps": round(gbps, 4),
                "flow_ids": int(after["flow_ids"] - before["flow_ids"]), "node_cpu_pct": _cpu_pct(before, after),
                "machine_steal_pct": shares["steal_pct"], "machine_idle_pct": shares["idle_pct"]}
    module = [sys.executable, "-m", "topomirror.lab.flowgen"]
    with in_node(plan, DST, [*module, "sink", "--seconds", str(WARMUP_S + seconds + 120)]) as sink:
        assert sink.stdout is not None
        if "listening" not in sink.stdout.readline():
            raise TrafficError(f"flow sink failed: {sink.stderr.read() if sink.stderr else ''}")
        # Counters are read while the node is idle (its API shares the packet loop): before the
        # generator starts and after it stopped and the node drained what was queued.
        before = _node_counters(socket_path, pid)
        target = str(plan.address_of(DST)) if mode == "underlay" else DST_OVERLAY
        with in_node(plan, SRC, [*module, "send", "--to", target, "--rate", str(rate),
                                 "--seconds", str(WARMUP_S + seconds + 100), "--first", str(first_flow),
                                 *(["--same-flow"] if mode == "same_flow" else [])]) as sender:
            time.sleep(WARMUP_S)
            started, machine = time.monotonic(), cpu_times()
            gbps = iperf3_tcp(plan, SRC, DST, seconds=seconds, dst_address=DST_OVERLAY).bits_per_second / 1e9
            stream_s, shares = time.monotonic() - started, cpu_shares(machine, cpu_times())
            sender.terminate()  # it reports what it sent on SIGTERM
            out, err = sender.communicate(timeout=30)
        time.sleep(0.5)
        after = _node_counters(socket_path, pid)
        sink.terminate()
    try:
        generated = json.loads(out.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise TrafficError(f"flow generator failed: {err.strip() or out[:300]}") from None
    # Flow ids the node assigned while the generator ran (iperf3's own two flows aside): the
    # generator's flows it saw. Over the generator's lifetime, that is the rate it decided at.
    decided = max(0.0, after["flow_ids"] - before["flow_ids"] - 2)
    return {
        "mode": mode, "gbps": round(gbps, 4),
        "offered_flows_per_s": generated["rate"], "generator_sent": generated["sent"],
        "generator_errors": generated["errors"], "generator_s": generated["seconds"],
        "decided_flows_per_s": round(decided / generated["seconds"], 1) if generated["seconds"] else 0.0,
        "decided_share": round(decided / generated["sent"], 4) if generated["sent"] else 0.0,
        "flow_ids": int(decided), "stream_wall_s": round(stream_s, 2),
        "analysis_dropped": int(after["analysis_dropped"] - before["analysis_dropped"]),
        "flows_in_table_end": int(after["flows_in_table"]),
        "timer_errors": int(after["timer_errors"] - before["timer_errors"]),
        "node_cpu_pct": _cpu_pct(before, after),
        # The machine during the stream: steal is CPU time the hypervisor gave to other VMs.
        "machine_steal_pct": shares["steal_pct"], "machine_idle_pct": shares["idle_pct"],
    }


def _cpu_pct(before: dict[str, float], after: dict[str, float]) -> float:
    """The h1 node's CPU use between two counter reads, in % of one core."""
    elapsed = after["at"] - before["at"]
    return round(100 * (after["cpu_s"] - before["cpu_s"]) / elapsed, 1) if elapsed > 0 else 0.0


def run(*, rate: int = TARGET_FLOWS_PER_S, seconds: float = 5.0, repetitions: int = 5, quick: bool = False,
        name: str = "bnflows", progress: Callable[[str], None] = lambda _: None) -> dict[str, object]:
    spec = load_lab(EXAMPLES / "diamond-mirror.yaml").model_copy(update={"name": name})
    plan = compile_lab(spec)
    if quick:
        seconds, repetitions = min(seconds, 3.0), 1
    trials: list[dict[str, object]] = []
    progress("deploying the diamond lab with adaptive node daemons")
    deploy(spec, "bench", force=True)
    try:
        registry = LabRegistry.load(spec.name)
        assert registry is not None
        socket_path = api_socket(registry, SRC)
        pid = next(p.pid for p in registry.processes if p.role == f"node:{SRC}")
        time.sleep(1.0)  # the nodes' first feedback and probes
        first_flow = 0
        modes = ["baseline", "with_flows", "same_flow", "underlay"]
        for rep in range(repetitions):
            # Rotate which mode goes first, so a drift in the machine's load hits all alike.
            for mode in modes[rep % len(modes):] + modes[:rep % len(modes)]:
                progress(f"repetition {rep + 1}/{repetitions}: {mode}, TCP h1 -> h2 for {seconds:g} s")
                trial = _trial(plan, socket_path, pid, mode=mode, rate=rate, seconds=seconds,
                               first_flow=first_flow)
                trial["repetition"] = rep + 1
                trials.append(trial)
                first_flow += int(trial.get("generator_sent", 0))  # type: ignore[call-overload]
    finally:
        progress("destroying the lab")
        destroy(spec)
    return summarise(trials, rate=rate, seconds=seconds)


def summarise(trials: list[dict[str, object]], *, rate: int, seconds: float) -> dict[str, object]:
    """Medians over the trials; drop from the paired trials of each repetition, then their median."""
    base = [t for t in trials if t["mode"] == "baseline"]
    loaded = [t for t in trials if t["mode"] == "with_flows"]
    control = [t for t in trials if t["mode"] == "same_flow"]
    underlay = [t for t in trials if t["mode"] == "underlay"]
    baseline_gbps = statistics.median(float(t["gbps"]) for t in base)  # type: ignore[arg-type]
    with_flows_gbps = statistics.median(float(t["gbps"]) for t in loaded)  # type: ignore[arg-type]

    def drops(reference: list[dict[str, object]], measured: list[dict[str, object]]) -> list[float]:
        """Per repetition: how much lower `measured` ran than `reference` (%)."""
        return [100 * (1 - float(w["gbps"]) / float(r["gbps"])) if float(r["gbps"]) else 100.0  # type: ignore[arg-type]
                for r, w in zip(reference, measured, strict=True)]

    paired = drops(base, loaded)
    # The floor: the same datagrams past the nodes, against the baseline of the same repetition
    # (results from before it existed have no underlay trials).
    underlay_paired = drops(base, underlay) if underlay else []
    drop = round(statistics.median(paired), 1)
    decision_paired = drops(control, loaded) if control else []
    decision_drop = round(statistics.median(decision_paired), 1) if decision_paired else None
    # The same over the repetitions whose two trials ran with the machine quiet (steal below
    # QUIET_STEAL_PCT in both): beside the figure, not instead of it.
    quiet = [x for x, c, w in zip(decision_paired, control, loaded, strict=False)
             if max(float(c.get("machine_steal_pct", 100.0)), float(w.get("machine_steal_pct", 100.0)))  # type: ignore[arg-type]
             < QUIET_STEAL_PCT]
    offered = statistics.median(float(t["offered_flows_per_s"]) for t in loaded)  # type: ignore[arg-type]
    decided = statistics.median(float(t["decided_flows_per_s"]) for t in loaded)  # type: ignore[arg-type]
    dropped = sum(int(t["analysis_dropped"]) for t in loaded)  # type: ignore[call-overload]
    # The generator's own timing makes 5,000 offered come out as 4,999.x measured: 1 % slack on the rate.
    rate_met = decided >= 0.99 * TARGET_FLOWS_PER_S
    met = rate_met and drop <= TARGET_MAX_DROP_PCT
    decisions_met = rate_met and decision_drop is not None and decision_drop <= TARGET_MAX_DROP_PCT
    return {
        "lab": "diamond-mirror.yaml (policy predictive), TCP h1 -> h2 overlay",
        "rate_requested": rate, "seconds_per_trial": seconds,
        "new_flows_per_s_offered": round(offered, 1), "new_flows_per_s_decided": round(decided, 1),
        "baseline_gbps": round(baseline_gbps, 4), "with_flows_gbps": round(with_flows_gbps, 4),
        "throughput_drop_pct": drop, "throughput_drop_pct_per_repetition": [round(x, 1) for x in paired],
        "same_flow_gbps": round(statistics.median(float(t["gbps"]) for t in control), 4) if control else None,  # type: ignore[arg-type]
        "underlay_gbps": round(statistics.median(float(t["gbps"]) for t in underlay), 4) if underlay else None,  # type: ignore[arg-type]
        "underlay_drop_pct": round(statistics.median(underlay_paired), 1) if underlay_paired else None,
        "underlay_drop_pct_per_repetition": [round(x, 1) for x in underlay_paired],
        "decision_drop_pct": decision_drop,
        "decision_drop_pct_per_repetition": [round(x, 1) for x in decision_paired],
        "decision_drop_pct_quiet": round(statistics.median(quiet), 1) if quiet else None,
        "quiet_repetitions": len(quiet),
        "analysis_dropped": dropped,
        "target": {"new_flows_per_s": TARGET_FLOWS_PER_S, "max_drop_pct": TARGET_MAX_DROP_PCT},
        "verdict": "met" if met else "missed",
        "verdict_decisions_only": "met" if decisions_met else "missed",
        "trials": trials,
    }
