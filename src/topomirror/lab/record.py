"""`topomirror record`: run a realistic workload mix on a lab and store the path telemetry.

The lab's node daemons run with policy `off` (measure, never mirror) and a fine feedback cadence.
The workload: latency-sensitive RPCs h1 -> h3, background flows h4 -> h2 and h3 -> h1 with sizes
drawn from the WebSearch and Hadoop distributions (Poisson arrivals), and bulk HTTP transfers
whose responses announce their size, at random times: they congest the tbf-limited core link.
Afterwards every node's FEEDBACK about its standard paths becomes `PathTelemetry` samples, with
the bytes the bulk transfers announced (from the announcing node's decision log) attached to the
paths that cross the same links. Stored in the predictor's SQLite format.
"""

from __future__ import annotations

import contextlib
import json
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
from topomirror.lab.plan import compile_lab
from topomirror.lab.realize import deploy, destroy
from topomirror.lab.registry import LabRegistry
from topomirror.lab.spec import LabSpec, load_lab
from topomirror.lab.traffic import in_node
from topomirror.node.launch import node_dir, overlay_address, with_host_settings
from topomirror.topology.graph import NetworkGraph

HOSTS = ("h1", "h2", "h3", "h4")


def recording_spec(base: LabSpec, feedback_ms: int) -> LabSpec:
    return with_host_settings(base, "rec-" + base.name[:16], adaptive={"policy": "off"},
                              timers={"feedback_ms": feedback_ms})


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
                server = [sys.executable, "-m", "topomirror.lab.bulk", "--port", "8080"]
                stack.enter_context(in_node(plan, host, server))
            stack.enter_context(in_node(plan, "h3", [sys.executable, "-m", "topomirror.lab.rpc", "server"]))
            time.sleep(1.0)
            client = [sys.executable, "-m", "topomirror.lab.rpc", "client", "--host", overlay_address(spec, "h3"),
                      "--rate", "50", "--seconds", str(seconds)]
            stack.enter_context(in_node(plan, "h1", client))
            events = _schedule(spec, rng, seconds)
            start = time.monotonic()
            threads = []
            for index, (at, client_node, server_node, size) in enumerate(events):
                delay = start + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if index % 10 == 0:
                    progress(f"recording: {at:.0f}/{seconds:.0f} s, {index}/{len(events)} transfers", at / seconds)
                url = f"http://{overlay_address(spec, server_node)}:8080/bytes/{size}"
                argv = ["ip", "netns", "exec", plan.namespace(client_node), "curl", "-s", "-o", "/dev/null",
                        "--max-time", "60", url]
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
    with PredictorStore(out) as store:
        store.add_telemetry(samples)
    congested = sum(1 for s in samples if s.queue_delay_ms >= 2.0)
    return {"file": str(out), "samples": len(samples), "paths": len({s.path_id for s in samples}),
            "congested_share": round(congested / len(samples), 4) if samples else 0.0,
            "announced_share": round(sum(1 for s in samples if s.announced_pending_bytes) / max(1, len(samples)), 4),
            "seconds": seconds, "transfers": len(events), "seed": seed}


def _schedule(spec: LabSpec, rng: np.random.Generator, seconds: float) -> list[tuple[float, str, str, int]]:
    """(time, client, server, bytes): background flows both ways across the core, and bulk transfers."""
    websearch, hadoop = FlowSizeDistribution(WEBSEARCH_CDF), FlowSizeDistribution(HADOOP_CDF)
    events: list[tuple[float, str, str, int]] = []
    for client, server, sizes, rate in (("h2", "h4", websearch, 0.2), ("h1", "h3", hadoop, 0.5),
                                        ("h4", "h2", hadoop, 0.25)):
        t = float(rng.exponential(1 / rate))
        while t < seconds - 2:
            events.append((t, client, server, int(min(sizes.sample(rng)[0], 1_000_000))))
            t += float(rng.exponential(1 / rate))
    t = float(rng.uniform(3, 8))
    while t < seconds - 5:
        events.append((t, "h2", "h4", int(rng.uniform(4e6, 15e6))))  # announced bulk, congests e2 -> e1
        t += float(rng.uniform(6, 14))
    return sorted(events)


def collect(spec: LabSpec, registry: LabRegistry, wall_start: float) -> list[PathTelemetry]:
    graph = NetworkGraph.from_lab_spec(spec)
    announcements: list[tuple[float, float, int, frozenset[tuple[str, str, str]]]] = []
    feedback: list[tuple[str, str, float, dict[str, int]]] = []
    for host in HOSTS:
        db_path = node_dir(registry, host) / "node.db"
        if not db_path.exists():
            continue
        with contextlib.closing(sqlite3.connect(str(db_path))) as db:
            for at, detail in db.execute("SELECT at, detail FROM decisions WHERE kind = 'announce'"):
                data = json.loads(detail)
                links = data.get("links", [])
                announcements.append((at, at + max(1.0, data.get("bytes", 0) * 8 / 30e6), int(data.get("bytes", 0)),
                                      frozenset(links)))
            for at, peer, report in db.execute("SELECT at, peer, report FROM telemetry WHERE path_id = 0"):
                if peer in HOSTS:  # relays are not destinations
                    feedback.append((host, peer, at, json.loads(report)))
    samples = []
    for host, peer, at, report in sorted(feedback, key=lambda f: f[2]):
        segment = graph.segment(host, peer)
        if segment is None:
            continue
        middle = set(segment.links[1:-1])  # access links are the hosts' own
        pending = sum(n for begin, end, n, links in announcements if begin <= at <= end and middle & links)
        sent = report["packets"] + report["lost"]
        samples.append(PathTelemetry(
            path_id=f"{host}>{peer}", time_ms=(at - wall_start) * 1000, queue_delay_ms=report["owd_avg_us"] / 1000,
            loss_rate=report["lost"] / sent if sent else 0.0, utilisation=None, capacity_bps=segment.capacity_bps,
            announced_pending_bytes=pending))
    return samples
