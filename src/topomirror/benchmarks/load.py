"""`topomirror bench load`: what the demo's load costs the RPC tail with nothing congested.

The demo's 1.5x target compares each policy's RPC p99 with a reference run that carries the RPCs
alone. On a small shared machine part of that ratio is the load itself (the background flows and
the bulk transfers through the node daemons, on the same vCPUs), not congestion. This bench runs,
in `pairs` alternations on the demo's lab:
- reference: the demo's uncongested run (the RPCs alone, policy off);
- load_uncongested: the demo's whole default workload (RPCs, background, bulk transfers) under
  policy off on the same lab with the core link widened to `core_bps` (nothing queues), and no
  link failure.
`load_p99_over_reference` is the median over the pairs of each pair's ratio: the share of the
1.5x the load takes before any congestion or protection. `..._quiet` is the same over the
requests during which the machine had no steal (demo.runner's quiet moments).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from topomirror.demo.runner import CORE, EXAMPLES, WIDE_CORE_BPS, run_policy, schedule, summarize, widened
from topomirror.lab.spec import load_lab


def ratios(pairs: list[tuple[dict[str, Any], dict[str, Any]]], key: str) -> list[float]:
    """Each pair's load p99 over its reference p99 under `key` (pairs missing either are left out)."""
    out = []
    for reference, load in pairs:
        if reference.get(key) and load.get(key):
            out.append(round(float(load[key]) / float(reference[key]), 3))
    return out


def run(*, pairs: int = 3, lab_file: Path | None = None, core_bps: int = WIDE_CORE_BPS,
        progress: Callable[[str], None] = lambda _: None) -> dict[str, object]:
    base = load_lab(lab_file or EXAMPLES / "diamond-mirror.yaml")
    wide = widened(base, CORE, core_bps)
    plan = dataclasses.replace(schedule(False), failure_at=None, failure_s=0.0)
    measured: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for index in range(pairs):
        progress(f"pair {index + 1}/{pairs}: the RPCs alone")
        reference = summarize(run_policy(base, "off", plan, congested=False))
        progress(f"pair {index + 1}/{pairs}: the whole load, core at {core_bps / 1e6:g} Mbit/s")
        load = run_policy(wide, "off", plan)
        load_summary = summarize(load)
        load_summary["bulk_seconds"] = [round(b["seconds"], 3) for b in load.bulk]
        measured.append((reference, load_summary))
    overall, quiet = ratios(measured, "rpc_p99_ms"), ratios(measured, "rpc_p99_quiet_ms")
    keep = ("rpc_p50_ms", "rpc_p99_ms", "rpc_p999_ms", "rpc_p99_quiet_ms", "cpu_steal_pct")
    return {
        "lab": base.name, "core_bps": core_bps, "pairs": pairs, "schedule": dataclasses.asdict(plan),
        "load_p99_over_reference": round(statistics.median(overall), 3) if overall else None,
        "load_p99_over_reference_per_pair": overall,
        "load_p99_over_reference_quiet": round(statistics.median(quiet), 3) if quiet else None,
        "load_p99_over_reference_quiet_per_pair": quiet,
        "runs": [{"reference": {k: r.get(k) for k in keep},
                  "load_uncongested": {**{k: w.get(k) for k in keep}, "bulk_seconds": w["bulk_seconds"]}}
                 for r, w in measured],
    }
