"""The machine's CPU time counters (`/proc/stat`): how much of this VM's CPU the hypervisor gave
to others (steal) while a workload ran. The demo and the benchmarks read them beside their
figures: on a shared VM a run with much steal measured the machine more than the code."""

from __future__ import annotations

from pathlib import Path

QUIET_STEAL_PCT = 5.0  # CPU steal below this in a run: the machine did not decide its tail


def cpu_times(stat: str | None = None) -> list[int]:
    """The machine's CPU time counters (the `cpu` line of /proc/stat: user, nice, system, idle,
    iowait, irq, softirq, steal, ...), in clock ticks."""
    text = stat if stat is not None else Path("/proc/stat").read_text()
    fields = text.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        raise ValueError("not /proc/stat: its first line is the 'cpu' total")
    return [int(x) for x in fields[1:]]


def cpu_shares(before: list[int], after: list[int]) -> dict[str, float]:
    """Idle and steal time between two `cpu_times` readings, in % of all CPU time. Steal is time
    the hypervisor gave this VM's CPUs to someone else: a run with much of it measured the machine
    more than the policy (its RPC tail follows the steal, not the network)."""
    delta = [b - a for a, b in zip(before, after, strict=False)]
    total = sum(delta[:8])
    if total <= 0:
        return {"idle_pct": 0.0, "steal_pct": 0.0}
    steal = delta[7] if len(delta) > 7 else 0
    return {"idle_pct": round(100 * (delta[3] + delta[4]) / total, 1), "steal_pct": round(100 * steal / total, 1)}
