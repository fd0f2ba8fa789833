"""`topomirror bench restart`: how long a node restart interrupts the traffic through it.

On the demo's diamond lab, h1 pings h3's overlay address every 10 ms (`ping -i 0.01`) while h3's
node daemon is restarted, `rounds` times each way, alternating:
- warm (the default of `lab node ... restart`): the new daemon loads while the old one still
  runs, then stops it and takes over (`node run --replace`);
- cold: the old daemon is stopped first, then the new one starts (as after a crash).
Each ping run lasts 8 s, so `outage_ms` = its lost share x 8 s (ping keeps its own pace, 60-100
a second here: a lost ping is 10-16 ms without a path through h3's node). The figure is the
median over the rounds; `ratios.warm_vs_cold` divides the two.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from topomirror.demo.runner import EXAMPLES
from topomirror.lab.plan import compile_lab
from topomirror.lab.realize import deploy, destroy
from topomirror.lab.registry import LabRegistry
from topomirror.lab.spec import load_lab
from topomirror.node.launch import overlay_address, restart_lab_node

INTERVAL_S = 0.01
DEADLINE_S = 8
_PING = re.compile(r"(\d+) packets transmitted, (\d+) received")


def lost_pings(report: str) -> tuple[int, int]:
    """(sent, lost) from ping's summary line."""
    match = _PING.search(report)
    if match is None:
        raise RuntimeError(f"ping printed no summary: {report.strip()[-300:]}")
    sent, received = int(match.group(1)), int(match.group(2))
    return sent, sent - received


def run(*, rounds: int = 3, lab_file: Path | None = None, node: str = "h3", pinger: str = "h1",
        progress: Callable[[str], None] = lambda _: None) -> dict[str, object]:
    spec = load_lab(lab_file or EXAMPLES / "diamond-mirror.yaml").model_copy(update={"name": "bn-restart"})
    plan = compile_lab(spec)
    progress("deploying the lab")
    deploy(spec, "bench", force=True)
    trials: list[dict[str, object]] = []
    outages: dict[str, list[int]] = {"warm": [], "cold": []}
    try:
        target = overlay_address(spec, node)
        time.sleep(1.0)
        for index in range(rounds):
            order = (True, False) if index % 2 == 0 else (False, True)
            for warm in order:
                mode = "warm" if warm else "cold"
                progress(f"round {index + 1}/{rounds}: {mode} restart of {node}'s daemon")
                registry = LabRegistry.load(spec.name)
                if registry is None:
                    raise RuntimeError(f"lab {spec.name} vanished during the bench (destroyed by another command?)")
                ping = subprocess.Popen(["ip", "netns", "exec", plan.namespace(pinger), "ping", "-q", "-n",
                                         "-i", str(INTERVAL_S), "-W", "1", "-w", str(DEADLINE_S), target],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                time.sleep(1.5)
                began = time.monotonic()
                restart_lab_node(plan, registry, node, warm=warm)
                took = time.monotonic() - began
                report, _ = ping.communicate(timeout=30)
                sent, lost = lost_pings(report)
                outage_ms = round(lost / max(1, sent) * DEADLINE_S * 1000)
                outages[mode].append(outage_ms)
                trials.append({"mode": mode, "restart_s": round(took, 2), "pings_sent": sent, "pings_lost": lost,
                               "outage_ms": outage_ms})
                time.sleep(1.0)
    finally:
        progress("destroying the lab")
        destroy(spec)
    warm_ms, cold_ms = (statistics.median(outages[mode]) if outages[mode] else None for mode in ("warm", "cold"))
    return {"rounds": rounds, "node": node, "warm_outage_ms": warm_ms, "cold_outage_ms": cold_ms,
            "ratios": {"warm_vs_cold": round(warm_ms / cold_ms, 3) if warm_ms is not None and cold_ms else None},
            "trials": trials}
