"""`topomirror demo`: the same workload under each mirroring policy, side by side in one run.

For each policy the diamond lab is deployed with every node daemon set to that policy, then:
- RPCs from h1 to h3 (our load generator, every request's completion time recorded);
- background flows with WebSearch-distributed sizes from h4's HTTP server to h2 (curl);
- bulk HTTP transfers h4 -> h2 whose responses announce their size (Content-Length), scheduled to
  congest the shared core link (these are the congestion events);
- in the default run, one core link failure of half a second.
An uncongested run (the RPCs alone: no background, no bulk, no failure) gives the reference p99.
The default run adds a second reference, `uncongested_load`: the whole workload (RPCs, background,
bulk transfers) under policy off with the core link widened so that nothing queues, and no
failure. Between the two, what the load costs the RPCs on the machine's CPUs is told apart from
what congestion costs them, which is the part mirroring can buy back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from topomirror.api.client import fetch
from topomirror.lab.machine import QUIET_STEAL_PCT, cpu_shares, cpu_times
from topomirror.lab.plan import LabPlan, compile_lab
from topomirror.lab.realize import deploy, destroy, set_link_state
from topomirror.lab.registry import LabRegistry
from topomirror.lab.rpc import percentile
from topomirror.lab.spec import LabSpec, load_lab
from topomirror.lab.traffic import in_node
from topomirror.node.launch import api_socket, node_dir, overlay_address, with_host_settings

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "labs"
CORE = "core"  # the diamond's shared link, the one the transfers congest
WIDE_CORE_BPS = 1_000_000_000  # the same-load reference: a core nothing queues at
POLICIES = ("off", "always", "reactive", "predictive")
HOSTS = ("h1", "h2", "h3", "h4")
RPC_PORT, BULK_PORT = 7000, 8080
Progress = Callable[[str, float], None]
STEAL_SAMPLE_S = 0.25  # the steal time line's resolution (a request's moment is this long or more)
COLUMNS_HELP = (
    "How to read it: lower RPC latency is better; 'uncongested' is the same RPC load alone (no other traffic);\n"
    "'uncongested_load' (default run) is the whole load, transfers included, with the core link widened so nothing\n"
    "queues: the gap between the two is what the load costs the RPCs on this machine's CPUs, and what a policy adds\n"
    "above the second is congestion and its protection.\n"
    "extra bytes = duplicate copies as a share of all bytes the nodes sent; lead time = how long before the\n"
    "standard path degraded a mirror session was already open (predictive only); CPU steal = share of this\n"
    "machine's CPU time the hypervisor gave to others during the run: where it is high, the RPC tail measured\n"
    "the machine more than the policy; p99 at quiet moments = the p99 of the requests during which steal\n"
    "stayed under 5 % in every quarter second (the share of requests that is: last column)."
)


@dataclass(frozen=True)
class Schedule:
    seconds: float
    rpc_rate: float
    bulk_at: tuple[float, ...]
    bulk_bytes: int
    failure_at: float | None
    failure_s: float
    background_per_s: float
    seed: int = 1


def schedule(quick: bool, seed: int = 1) -> Schedule:
    if quick:
        return Schedule(seconds=10.0, rpc_rate=200, bulk_at=(3.0,), bulk_bytes=12_000_000, failure_at=None,
                        failure_s=0.0, background_per_s=2.0, seed=seed)
    return Schedule(seconds=30.0, rpc_rate=200, bulk_at=(5.0, 14.0), bulk_bytes=12_000_000, failure_at=24.0,
                    failure_s=0.5, background_per_s=2.0, seed=seed)


@dataclass
class PolicyRun:
    policy: str
    rpc: dict[str, Any] = field(default_factory=dict)
    bulk: list[dict[str, float]] = field(default_factory=list)
    background: list[dict[str, float]] = field(default_factory=list)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    paths: dict[str, Any] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)  # h3's (the RPC server's node) decisions
    source_sessions: list[dict[str, Any]] = field(default_factory=list)  # h1's (the RPC client's node)
    started_monotonic: float = 0.0
    started_wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # the machine's CPU over the workload (cpu_shares)
    # (from_s, to_s, steal %) every STEAL_SAMPLE_S of the workload, from steal_started_wall
    steal: list[tuple[float, float, float]] = field(default_factory=list)
    steal_started_wall: float = 0.0


class StealSampler:
    """The machine's steal in each `every` seconds while a workload runs (a thread reading
    /proc/stat), as (from_s, to_s, steal %) from the moment it started: the time line against
    which the requests slowed by the hypervisor, not by the network, can be told apart."""

    def __init__(self, every: float = STEAL_SAMPLE_S, *, read: Callable[[], list[int]] = cpu_times,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every, self._read, self._clock = every, read, clock
        self.windows: list[tuple[float, float, float]] = []
        self.started_wall = 0.0  # the wall clock at the time line's zero
        self._first: list[int] = []  # the readings at the start and at `stop`
        self._last: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steal-sampler", daemon=True)

    def __enter__(self) -> StealSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=5)
            self._last = self._read()

    def shares(self) -> dict[str, float]:
        """Idle and steal from start to `stop` (cpu_shares)."""
        return cpu_shares(self._first, self._last) if self._first and self._last else {}

    def _run(self) -> None:
        start, self.started_wall = self._clock(), time.time()
        at, before = 0.0, self._read()
        self._first = before
        while not self._stop.wait(self.every):
            now, after = self._clock() - start, self._read()
            self.windows.append((round(at, 3), round(now, 3), cpu_shares(before, after)["steal_pct"]))
            at, before = now, after


def quiet_latencies(timeline: list[tuple[float, float]], windows: list[tuple[float, float, float]],
                    offset_s: float, threshold_pct: float = QUIET_STEAL_PCT) -> list[float]:
    """The latencies (ms) of the requests during which no steal window reached `threshold_pct`.
    `timeline`: (sent at, from the client's start, s; latency, ms); `windows`: StealSampler's, from
    the workload's start, which the client started `offset_s` after. A request that began or ended
    outside the sampled span is left out (nothing is known of the machine then). A slow request
    spans more windows, so it is more likely to touch a noisy one: the figure leans a little low
    for a policy whose slow requests are slow for other reasons (read it beside the raw p99)."""
    if not windows:
        return []
    noisy = [(a, b) for a, b, steal in windows if steal >= threshold_pct]
    first, last = windows[0][0], windows[-1][1]
    quiet: list[float] = []
    for sent, latency in timeline:
        begin = offset_s + sent
        end = begin + latency / 1000
        if begin < first or end > last:
            continue
        if not any(a < end and begin < b for a, b in noisy):
            quiet.append(latency)
    return quiet


def widened(spec: LabSpec, link: str = CORE, bps: int = WIDE_CORE_BPS) -> LabSpec:
    """The same lab with `link`'s rate limit raised to `bps` (its queue and everything else kept)."""
    if not any(item.name == link for item in spec.links):
        raise ValueError(f"lab {spec.name!r} has no link named {link!r}")
    links = [item.model_copy(update={"bw": bps}) if item.name == link else item for item in spec.links]
    return spec.model_copy(update={"links": links})


def policy_spec(base: LabSpec, policy: str, name: str) -> LabSpec:
    return with_host_settings(base, name, adaptive={"policy": policy})


def _curl(plan: LabPlan, client: str, url: str, results: list[dict[str, float]], start: float,
          timeout: float) -> None:
    began = time.monotonic() - start
    res = subprocess.run(["ip", "netns", "exec", plan.namespace(client), "curl", "-s", "-o", "/dev/null",
                          "--max-time", str(timeout), "-w", "%{size_download} %{time_total}", url],
                         capture_output=True, text=True)
    try:
        size, total = res.stdout.split()
        results.append({"start_s": round(began, 3), "bytes": int(float(size)), "seconds": float(total),
                         "ok": res.returncode == 0})
    except ValueError:
        results.append({"start_s": round(began, 3), "bytes": 0, "seconds": 0.0, "ok": False})


def run_policy(base: LabSpec, policy: str, plan_schedule: Schedule, *, congested: bool = True,
               progress: Callable[[str], None] = lambda _: None, label: str | None = None) -> PolicyRun:
    """One policy's part: deploy, run the workload (`congested`: with background, bulk transfers and
    the failure of `plan_schedule`; else the RPCs alone), collect, destroy. `label` names the run
    (default: the policy, or "uncongested")."""
    name = f"dm-{policy}"[:20] if congested else "dm-uncongested"
    spec = policy_spec(base, policy, name)
    plan = compile_lab(spec)
    run = PolicyRun(label or (policy if congested else "uncongested"))
    progress(f"{run.policy}: deploying the lab")
    deploy(spec, "demo", force=True)
    try:
        registry = LabRegistry.load(spec.name)
        assert registry is not None
        h3, h4 = overlay_address(spec, "h3"), overlay_address(spec, "h4")
        rng = np.random.default_rng(plan_schedule.seed)
        with contextlib.ExitStack() as stack:
            stack.enter_context(in_node(plan, "h3", [sys.executable, "-m", "topomirror.lab.rpc", "server",
                                                     "--port", str(RPC_PORT)]))
            stack.enter_context(in_node(plan, "h4", [sys.executable, "-m", "topomirror.lab.bulk", "--port",
                                                     str(BULK_PORT)]))
            time.sleep(1.0)
            # Warm-up: a few seconds of light traffic so paths have a baseline and relays are known.
            subprocess.run(["ip", "netns", "exec", plan.namespace("h1"), "ping", "-c", "5", "-i", "0.1", "-q", h3],
                           capture_output=True)
            progress(f"{run.policy}: workload ({plan_schedule.seconds:.0f} s)")
            client = [sys.executable, "-m", "topomirror.lab.rpc", "client", "--host", h3, "--port", str(RPC_PORT),
                      "--rate", str(plan_schedule.rpc_rate), "--seconds", str(plan_schedule.seconds),
                      "--timeout", "3", "--timeline"]
            run.started_monotonic = time.monotonic()
            run.started_wall = time.time()
            with StealSampler() as sampler, in_node(plan, "h1", client) as rpc_proc:
                threads: list[threading.Thread] = []
                events: list[tuple[float, Callable[[], None]]] = []
                from topomirror.analysis.synthetic import WEBSEARCH_CDF, FlowSizeDistribution

                sizes = FlowSizeDistribution(WEBSEARCH_CDF)
                t = 0.5
                while congested and t < plan_schedule.seconds - 1:
                    size = int(min(sizes.sample(rng)[0], 1_000_000))
                    url = f"http://{h4}:{BULK_PORT}/bytes/{size}"
                    events.append((t, functools.partial(_curl, plan, "h2", url, run.background,
                                                        run.started_monotonic, 20)))
                    t += float(rng.exponential(1 / plan_schedule.background_per_s))
                if congested:
                    for at in plan_schedule.bulk_at:
                        url = f"http://{h4}:{BULK_PORT}/bytes/{plan_schedule.bulk_bytes}"
                        events.append((at, functools.partial(_curl, plan, "h2", url, run.bulk,
                                                             run.started_monotonic, 60)))
                    if plan_schedule.failure_at is not None:
                        def fail() -> None:
                            set_link_state(spec, "demo", "core", up=False)
                            time.sleep(plan_schedule.failure_s)
                            set_link_state(spec, "demo", "core", up=True)
                        events.append((plan_schedule.failure_at, fail))
                for at, action in sorted(events, key=lambda e: e[0]):
                    delay = run.started_monotonic + at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    thread = threading.Thread(target=action, daemon=True)
                    thread.start()
                    threads.append(thread)
                out, err = rpc_proc.communicate(timeout=plan_schedule.seconds + 30)
                sampler.stop()
                run.cpu = sampler.shares()
                run.steal, run.steal_started_wall = list(sampler.windows), sampler.started_wall
                for thread in threads:
                    thread.join(timeout=60)
            try:
                run.rpc = json.loads(out)
            except json.JSONDecodeError:
                raise RuntimeError(f"the RPC client failed under policy {policy}: {err.strip()[-500:]}") from None
        progress(f"{run.policy}: collecting node statistics")
        for host in HOSTS:
            socket_path = api_socket(registry, host)
            run.nodes[host] = fetch("/status", socket_path=socket_path)
        run.paths = fetch("/paths?last=1000", socket_path=api_socket(registry, "h3")).get("h1", {})
        run.sessions = _session_log(node_dir(registry, "h3") / "node.db")
        run.source_sessions = _session_log(node_dir(registry, "h1") / "node.db")
    finally:
        destroy(spec)
    return run


def _session_log(db: Path) -> list[dict[str, Any]]:
    import sqlite3

    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        rows = conn.execute("SELECT at, subject, kind, reason FROM decisions WHERE kind IN "
                            "('mirror', 'session_state', 'announce', 'adapt', 'path_silent') ORDER BY id").fetchall()
    return [{"at": at, "subject": s, "kind": k, "reason": r} for at, s, k, r in rows]


def summarize(run: PolicyRun) -> dict[str, Any]:
    original = sum(n.get("bytes_original", 0) for n in run.nodes.values())
    extra = sum(n.get("bytes_extra", 0) for n in run.nodes.values())
    bulk_bits = sum(b["bytes"] * 8 for b in run.bulk if b["seconds"] > 0)
    bulk_time = sum(b["seconds"] for b in run.bulk if b["seconds"] > 0)
    leads = [lt for n in run.nodes.values() for lt in n.get("lead_times_ms", [])]
    return {
        "rpc_p50_ms": _round(run.rpc.get("p50_ms")),
        "rpc_p99_ms": _round(run.rpc.get("p99_ms")),
        "rpc_p999_ms": _round(run.rpc.get("p999_ms")),
        "rpc_count": run.rpc.get("count", 0),
        "rpc_errors": run.rpc.get("errors", 0),
        "bulk_goodput_mbps": round(bulk_bits / bulk_time / 1e6, 2) if bulk_time else None,
        "extra_bytes_pct": round(100 * extra / original, 2) if original else 0.0,
        "sessions": sum(n.get("sessions_opened", 0) for n in run.nodes.values()),
        # Lead time is a property of prediction: how long before the path degraded the mirror was up.
        "lead_time_ms": round(statistics.median(leads), 1) if leads and run.policy == "predictive" else None,
        "cpu_steal_pct": run.cpu.get("steal_pct"),
        **_quiet_summary(run),
    }


def _quiet_summary(run: PolicyRun) -> dict[str, Any]:
    """The RPC p99 of the requests no steal touched, and how many of all requests that is."""
    timeline = run.rpc.get("timeline") or []
    wall_start = run.rpc.get("wall_start")
    if not timeline or wall_start is None or not run.steal:
        return {"rpc_p99_quiet_ms": None, "quiet_requests_pct": None}
    quiet = sorted(quiet_latencies(timeline, run.steal, wall_start - (run.steal_started_wall or run.started_wall)))
    return {"rpc_p99_quiet_ms": _round(percentile(quiet, 0.99)) if len(quiet) >= 100 else None,
            "quiet_requests_pct": round(100 * len(quiet) / len(timeline), 1)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def policy_order(policies: tuple[str, ...], rotation: int) -> tuple[str, ...]:
    """The order the policies run in: `policies` rotated by `rotation`. Over successive runs each
    policy takes each place (the machine's load drifts over minutes; a fixed order would give one
    policy the same minutes of every run)."""
    if not policies:
        return ()
    k = rotation % len(policies)
    return policies[k:] + policies[:k]


def run_demo(lab_file: Path | None = None, *, quick: bool = False, out_dir: Path | None = None,
             policies: tuple[str, ...] = POLICIES, rotation: int | None = None, same_load: bool | None = None,
             progress: Progress = lambda _m, _f: None) -> dict[str, Any]:
    """`rotation`: see policy_order; None rotates by the clock's second (runs a few minutes apart
    would share the order if it were the minute), 0 keeps `policies`' order. `same_load`: run the
    second reference (`uncongested_load`, see the module docstring); default: in the default run,
    not in `quick`, and only on a lab with a link named `CORE`."""
    base = load_lab(lab_file or EXAMPLES / "diamond-mirror.yaml")
    plan_schedule = schedule(quick)
    if same_load is None:
        same_load = not quick and any(link.name == CORE for link in base.links)
    references = ["uncongested", *(["uncongested_load"] if same_load else [])]
    steps = len(policies) + len(references)
    runs: dict[str, PolicyRun] = {}
    started = time.monotonic()

    def step_progress(index: int) -> Callable[[str], None]:
        return lambda message: progress(message, index / steps)

    order = policy_order(policies, int(time.time()) if rotation is None else rotation)
    runs["uncongested"] = run_policy(base, "off", plan_schedule, congested=False, progress=step_progress(0))
    if same_load:
        runs["uncongested_load"] = run_policy(
            widened(base), "off", dataclasses.replace(plan_schedule, failure_at=None, failure_s=0.0),
            progress=step_progress(1), label="uncongested_load")
    for index, policy in enumerate(order, start=len(references)):
        runs[policy] = run_policy(base, policy, plan_schedule, progress=step_progress(index))
    progress("writing the report", 1.0)
    result: dict[str, Any] = {
        "lab": base.name,
        "quick": quick,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "duration_s": round(time.monotonic() - started, 1),
        "schedule": plan_schedule.__dict__,
        "order": [*references, *order],  # the order the runs took
        **{name: summarize(runs[name]) for name in references},
        "policies": {policy: summarize(runs[policy]) for policy in policies},
    }
    result["verdict"] = verdict(result)
    runs = {**{name: runs[name] for name in references}, **{policy: runs[policy] for policy in policies}}  # as listed
    if out_dir is not None:
        from topomirror.demo.report import write_report

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
        (out_dir / "runs.json").write_text(json.dumps({k: v.__dict__ for k, v in runs.items()}, default=str))
        result["report"] = str(write_report(result, runs, out_dir / "report.html"))
    return result


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """The targets of the headline benchmark, checked on this run's numbers."""
    p = result["policies"]
    out: dict[str, Any] = {}
    try:
        off, always, predictive, reactive = p["off"], p["always"], p["predictive"], p["reactive"]
    except KeyError:
        return out
    reduction_always = off["rpc_p99_ms"] - always["rpc_p99_ms"]
    reduction_predictive = off["rpc_p99_ms"] - predictive["rpc_p99_ms"]
    out["p99_reduction_share_of_always"] = (round(reduction_predictive / reduction_always, 3)
                                            if reduction_always > 0 else None)
    out["extra_bytes_share_of_always"] = (round(predictive["extra_bytes_pct"] / always["extra_bytes_pct"], 3)
                                          if always["extra_bytes_pct"] else None)
    base = result["uncongested"]["rpc_p99_ms"]
    out["predictive_p99_over_uncongested"] = round(predictive["rpc_p99_ms"] / base, 3) if base else None
    # `always` duplicates every packet, the most protection any policy can give: the same ratio for
    # it is what the run's machine and load leave to any policy that mirrors (not a target).
    out["always_p99_over_uncongested"] = round(always["rpc_p99_ms"] / base, 3) if base else None
    out["predictive_beats_reactive_p99"] = predictive["rpc_p99_ms"] < reactive["rpc_p99_ms"]
    out["predictive_beats_off_p99"] = predictive["rpc_p99_ms"] < off["rpc_p99_ms"]
    out["predictive_fewer_bytes_than_always"] = predictive["extra_bytes_pct"] < always["extra_bytes_pct"]
    # The ratio to the uncongested p99 compares two runs; on a shared VM either may lose CPU to the
    # hypervisor. Below QUIET_STEAL_PCT in both, the ratio measured the policy.
    steals = [result["uncongested"].get("cpu_steal_pct"), predictive.get("cpu_steal_pct")]
    out["quiet_machine_for_the_ratio"] = all(x is not None and x < QUIET_STEAL_PCT for x in steals)
    # The same two comparisons on the requests no steal touched (beside the targets, not instead).
    quiet_base = result["uncongested"].get("rpc_p99_quiet_ms")
    quiet_predictive, quiet_reactive = predictive.get("rpc_p99_quiet_ms"), reactive.get("rpc_p99_quiet_ms")
    out["quiet_moments_predictive_p99_over_uncongested"] = (
        round(quiet_predictive / quiet_base, 3) if quiet_predictive and quiet_base else None)
    out["quiet_moments_predictive_beats_reactive_p99"] = (
        quiet_predictive < quiet_reactive if quiet_predictive and quiet_reactive else None)
    quiet_always = always.get("rpc_p99_quiet_ms")
    out["quiet_moments_always_p99_over_uncongested"] = (
        round(quiet_always / quiet_base, 3) if quiet_always and quiet_base else None)
    # Beside the target, not instead of it: the same ratios against the whole load with nothing
    # congested (what the load alone costs the RPCs; the rest is congestion and its protection).
    load_base = (result.get("uncongested_load") or {}).get("rpc_p99_ms")
    if load_base:
        out["uncongested_load_p99_over_uncongested"] = round(load_base / base, 3) if base else None
        out["predictive_p99_over_uncongested_load"] = round(predictive["rpc_p99_ms"] / load_base, 3)
        out["always_p99_over_uncongested_load"] = round(always["rpc_p99_ms"] / load_base, 3)
    return out
