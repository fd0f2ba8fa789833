"""`topomirror record`: run a realistic workload mix on a lab and store the path telemetry.

The lab's node daemons run with policy `off` (measure, never mirror), a fine feedback cadence and
idle probes every 20 ms (so every path reports every interval, busy or not).
The workload (DESIGN.md section 6): latency-sensitive RPCs h1 -> h3; background HTTP flows in both
directions across the core with WebSearch and Hadoop sizes (Poisson arrivals; the few above the
node's 500 kB announce threshold are announced, the rest are not); bulk HTTP transfers whose
responses announce their size (Content-Length); and bulk TCP transfers that announce nothing
(iperf3, standing in for TLS or chunked uploads), so that an announcement is a strong signal but
not an oracle: both kinds fill the tbf-limited core link (30 Mbit/s, 200 packets: ~80 ms).
Afterwards every node's FEEDBACK about its standard paths becomes `PathTelemetry` samples, with
the bytes announced (from the announcing node's decision log) attached to the paths that cross
the same links in the same direction. Stored in the predictor's SQLite format.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from topomirror.analysis.features import PathTelemetry
from topomirror.analysis.predict import PredictorStore
from topomirror.analysis.synthetic import HADOOP_CDF, WEBSEARCH_CDF, FlowSizeDistribution
from topomirror.benchmarks.predictor import RECORDED_THRESHOLD_MS
from topomirror.lab.plan import compile_lab
from topomirror.lab.realize import deploy, destroy
from topomirror.lab.registry import LabRegistry
from topomirror.lab.spec import LabSpec, load_lab
from topomirror.lab.traffic import in_node
from topomirror.node.launch import node_dir, overlay_address, with_host_settings
from topomirror.topology.graph import NetworkGraph

HOSTS = ("h1", "h2", "h3", "h4")
# Unannounced bulk transfers: (client, server) pairs whose data crosses the core, one iperf3
# server port each so that transfers of different pairs can overlap.
SILENT_PAIRS: tuple[tuple[str, str, int], ...] = (("h3", "h1", 5301), ("h2", "h4", 5302), ("h4", "h2", 5303))
PROBE_MS = 20
# A meter base that drops by more than this and never comes back is a measurement glitch (see
# `_rebase`), not a shorter path: the lab's propagation delays are fixed.
BASE_GLITCH_MS = 2.0
# Offsets are estimated from later samples only while this much of the recording remains; the last
# stretch keeps the offset it had (a congested tail must not be mistaken for a new base).
REBASE_TAIL_S = 10.0
REBASE_RUN = 21  # reports in the running median of per-report minimums (odd)


def recording_spec(base: LabSpec, feedback_ms: int) -> LabSpec:
    return with_host_settings(base, "rec-" + base.name[:16], adaptive={"policy": "off"},
                              timers={"feedback_ms": feedback_ms, "probe_ms": PROBE_MS})


def record(lab_file: Path, minutes: float, out: Path, *, seed: int = 1, feedback_ms: int = 50,
           progress: Callable[[str, float], None] = lambda _m, _f: None) -> dict[str, object]:
    spec = recording_spec(load_lab(lab_file), feedback_ms)
    missing = [h for h in HOSTS if h not in spec.nodes or not (spec.nodes[h].topomirror or {}).get("overlay")]
    if missing:
        raise ValueError(f"{lab_file}: recording needs hosts h1-h4 with a topomirror overlay (missing: {missing}); "
                         "use examples/labs/diamond-mirror.yaml")
    plan = compile_lab(spec)
    rng = np.random.default_rng(seed)
    seconds = minutes * 60
    progress("deploying the lab", 0.0)
    deploy(spec, str(lab_file), force=True)
    try:
        registry = LabRegistry.load(spec.name)
        assert registry is not None
        wall_start = time.time()
        with contextlib.ExitStack() as stack:
            for host in HOSTS:
                bulk_server = [sys.executable, "-m", "topomirror.lab.bulk", "--port", "8080"]
                stack.enter_context(in_node(plan, host, bulk_server))
            stack.enter_context(in_node(plan, "h3", [sys.executable, "-m", "topomirror.lab.rpc", "server"]))
            for _client, server, port in SILENT_PAIRS:
                stack.enter_context(in_node(plan, server, ["iperf3", "-s", "-p", str(port)]))
            time.sleep(1.0)
            client = [sys.executable, "-m", "topomirror.lab.rpc", "client", "--host", overlay_address(spec, "h3"),
                      "--rate", "50", "--seconds", str(seconds)]
            stack.enter_context(in_node(plan, "h1", client))
            events = _schedule(spec, rng, seconds)
            start = time.monotonic()
            threads = []
            for index, (at, client_node, server_node, size, kind) in enumerate(events):
                delay = start + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if index % 10 == 0:
                    progress(f"recording: {at:.0f}/{seconds:.0f} s, {index}/{len(events)} transfers", at / seconds)
                address = overlay_address(spec, server_node)
                if kind == "silent":
                    port = next(p for c, s, p in SILENT_PAIRS if (c, s) == (client_node, server_node))
                    command = ["iperf3", "-c", address, "-p", str(port), "-n", str(size), "--connect-timeout", "3000"]
                else:
                    command = ["curl", "-s", "-o", "/dev/null", "--max-time", "60",
                               f"http://{address}:8080/bytes/{size}"]
                argv = ["ip", "netns", "exec", plan.namespace(client_node), *command]
                thread = threading.Thread(target=subprocess.run, args=(argv,), kwargs={"capture_output": True},
                                          daemon=True)
                thread.start()
                threads.append(thread)
            remaining = start + seconds - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
            for thread in threads:
                thread.join(timeout=30)
        progress("stopping the nodes and reading their telemetry", 0.97)
        # Stop the daemons first (by PID) so every database is flushed and closed.
        from topomirror.node.launch import stop_lab_node

        for host in HOSTS:
            stop_lab_node(registry, host)
        samples = collect(spec, registry, wall_start)
    finally:
        destroy(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # a recording replaces the file; appending would mix two clocks
    with PredictorStore(out) as store:
        store.add_telemetry(samples)
    congested = sum(1 for s in samples if s.queue_delay_ms > RECORDED_THRESHOLD_MS)
    return {"file": str(out), "samples": len(samples), "paths": len({s.path_id for s in samples}),
            "congested_share": round(congested / len(samples), 4) if samples else 0.0,
            "announced_share": round(sum(1 for s in samples if s.announced_pending_bytes) / max(1, len(samples)), 4),
            "seconds": seconds, "transfers": len(events),
            "silent_transfers": sum(1 for e in events if e[4] == "silent"), "seed": seed}


def _schedule(spec: LabSpec, rng: np.random.Generator, seconds: float) -> list[tuple[float, str, str, int, str]]:
    """(time, client, server, bytes, kind): background HTTP flows both ways across the core, announced
    bulk HTTP transfers, and unannounced ("silent") bulk TCP transfers. Data flows server -> client
    for HTTP, client -> server for iperf3."""
    websearch, hadoop = FlowSizeDistribution(WEBSEARCH_CDF), FlowSizeDistribution(HADOOP_CDF)
    events: list[tuple[float, str, str, int, str]] = []

    def poisson(rate: float, first: float = 0.0) -> list[float]:
        times, t = [], first + float(rng.exponential(1 / rate))
        while t < seconds - 5:
            times.append(t)
            t += float(rng.exponential(1 / rate))
        return times

    for client, server, sizes, rate in (("h2", "h4", websearch, 0.3), ("h1", "h3", hadoop, 0.5),
                                        ("h4", "h2", hadoop, 0.25), ("h3", "h1", websearch, 0.2)):
        events += [(t, client, server, int(min(sizes.sample(rng)[0], 2_000_000)), "http") for t in poisson(rate)]
    # Announced bulk (Content-Length), h4 -> h2 and h1 -> h3 data: both directions of the core.
    events += [(t, "h2", "h4", int(rng.uniform(3e6, 12e6)), "http") for t in poisson(1 / 9, 2.0)]
    events += [(t, "h3", "h1", int(rng.uniform(3e6, 12e6)), "http") for t in poisson(1 / 18, 2.0)]
    # Unannounced bulk, at a lower rate than the announced one.
    for client, server, _port in SILENT_PAIRS:
        events += [(t, client, server, int(rng.uniform(2e6, 10e6)), "silent") for t in poisson(1 / 40, 2.0)]
    return sorted(events)


_ANNOUNCED_PATH = re.compile(r"\bfrom (\S+) to (\S+) over\b")


def _core_hops(graph: NetworkGraph, src: str, dst: str) -> frozenset[tuple[str, str, str]] | None:
    """The directed (link, from, to) hops between src and dst, without the hosts' own access links."""
    segment = graph.segment(src, dst)
    if segment is None:
        return None
    hops = zip(segment.links, segment.nodes, segment.nodes[1:], strict=False)
    return frozenset(list(hops)[1:-1])


def collect(spec: LabSpec, registry: LabRegistry, wall_start: float) -> list[PathTelemetry]:
    graph = NetworkGraph.from_lab_spec(spec)
    announcements: list[tuple[float, float, int, frozenset[tuple[str, str, str]]]] = []
    feedback: dict[tuple[str, str], list[tuple[float, dict[str, int]]]] = {}
    for host in HOSTS:
        db_path = node_dir(registry, host) / "node.db"
        if not db_path.exists():
            continue
        with contextlib.closing(sqlite3.connect(str(db_path))) as db:
            for at, reason, detail in db.execute("SELECT at, reason, detail FROM decisions WHERE kind = 'announce'"):
                data = json.loads(detail)
                match = _ANNOUNCED_PATH.search(reason or "")
                hops = _core_hops(graph, match.group(1), match.group(2)) if match else None
                if not hops:
                    continue
                nbytes = int(data.get("bytes", 0))
                # Active from the announcement until the bytes could have crossed the 30 Mbit/s core.
                announcements.append((at, at + max(1.0, nbytes * 8 / 30e6), nbytes, hops))
            for at, peer, report in db.execute("SELECT at, peer, report FROM telemetry WHERE path_id = 0"):
                if peer in HOSTS:  # relays are not destinations
                    feedback.setdefault((host, peer), []).append((at, json.loads(report)))
    samples = []
    for (host, peer), reports in sorted(feedback.items()):
        segment = graph.segment(host, peer)
        hops = _core_hops(graph, host, peer)
        if segment is None or hops is None:
            continue
        reports.sort(key=lambda r: r[0])
        for (at, report), delay_ms in zip(reports, _rebase(reports), strict=True):
            if delay_ms is None:
                continue
            pending = sum(n for begin, end, n, links in announcements if begin <= at <= end and hops & links)
            sent = report["packets"] + report["lost"]
            samples.append(PathTelemetry(
                path_id=f"{host}>{peer}", time_ms=(at - wall_start) * 1000, queue_delay_ms=delay_ms,
                loss_rate=report["lost"] / sent if sent else 0.0, utilisation=None, capacity_bps=segment.capacity_bps,
                announced_pending_bytes=pending))
    return sorted(samples, key=lambda s: (s.time_ms, s.path_id))


def _rebase(reports: list[tuple[float, dict[str, int]]]) -> list[float | None]:
    """Mean relative one-way delay (ms) of each report, with the meter's base glitches undone.

    The destination reports delay relative to the smallest recent transit. Nodes before
    2026-11-27 stamped some arrivals too early (the receive loop's start time), which lowered that
    base for good: every later report of the path carried a constant offset, tens of ms of "queue"
    on paths that cross no shaped link, and smaller early stamps showed as isolated dips of a
    report's minimum. The node now takes the kernel's stamp as is and keeps a windowed base
    (`feedback.measure`), so on new recordings this finds next to nothing to undo; it stays as a
    guard, since labels must never come from a shifted base.
    The lab's hosts share one clock and fixed propagation delays, so the true base never moves:
    the offset at a report is the lowest later value of the per-report minimum's running median
    over `REBASE_RUN` reports (isolated dips do not count; a path is idle now and then). Reports
    next to a change of offset (a glitch inside them) are dropped (None), and the recording's last
    stretch keeps the offset it had before (a congested tail must not pass for a new base).
    """
    if not reports:
        return []
    minimum = np.array([r["owd_min_us"] for _, r in reports], dtype=float) / 1000.0
    average = np.array([r["owd_avg_us"] for _, r in reports], dtype=float) / 1000.0
    times = np.array([at for at, _ in reports], dtype=float)
    half = REBASE_RUN // 2
    padded = np.pad(minimum, half, mode="edge")
    running = np.median(np.lib.stride_tricks.sliding_window_view(padded, REBASE_RUN), axis=1)
    offset = np.minimum.accumulate(running[::-1])[::-1]
    tail = int(np.searchsorted(times, times[-1] - REBASE_TAIL_S))
    if 0 < tail < offset.size:
        offset[tail:] = offset[tail - 1]
    steps = np.flatnonzero(np.diff(offset) > BASE_GLITCH_MS)
    glitch = np.zeros(offset.size, dtype=bool)
    for step in steps:
        glitch[max(0, step - half):step + half + 2] = True
    packets = np.array([r["packets"] for _, r in reports])
    return [None if glitch[i] or packets[i] == 0 else max(0.0, float(average[i] - offset[i]))
            for i in range(offset.size)]
