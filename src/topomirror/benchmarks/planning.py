"""Mirror planning time on a k=8 fat-tree with relays (`topomirror bench planning`).

80 switches + 128 hosts, plus relays hanging off core and aggregation switches. Each sample picks a
random host pair and a random forecast (the standard path's core-facing links likely congested, plus
random links anywhere) and times one `plan_mirror` call. Graph caches (routes, bridges) are warmed
once before timing, as they are in a running node; the first, cold plan is reported separately.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from topomirror.lab.generate import fat_tree
from topomirror.lab.spec import LabSpec
from topomirror.topology.budget import SessionBudget
from topomirror.topology.graph import NetworkGraph, Routing
from topomirror.topology.paths import MirrorPlan, NoPlan, plan_mirror
from topomirror.topology.request import MirrorRequest

# Relays on four cores (one per aggregation column) and on one aggregation switch in four pods.
RELAY_ATTACHMENTS = ("c0", "c5", "c10", "c15", "a0x1", "a2x2", "a4x3", "a6x0")


def fat_tree_with_relays(k: int = 8, attachments: tuple[str, ...] = RELAY_ATTACHMENTS) -> LabSpec:
    data: dict[str, Any] = fat_tree(k, name=f"plan-k{k}", bw="10gbit")
    used_ports: dict[str, int] = {}
    for link in data["links"]:
        for end in link["endpoints"]:
            node, iface = end.split(":")
            used_ports[node] = max(used_ports.get(node, 0), int(iface.removeprefix("eth")))
    for index, switch in enumerate(attachments):
        relay = f"x{index}"
        data["nodes"][relay] = {"kind": "relay"}
        used_ports[switch] = used_ports.get(switch, 0) + 1
        data["links"].append({"endpoints": [f"{relay}:eth1", f"{switch}:eth{used_ports[switch]}"], "bw": "10gbit"})
    return LabSpec.model_validate(data)


def _forecast(graph: NetworkGraph, src: str, dst: str, rng: random.Random, link_names: list[str]) -> dict[str, float]:
    forecast = {name: rng.random() for name in rng.sample(link_names, 12)}
    standard = graph.segment(src, dst)
    if standard is not None:
        # Congestion is predicted where the standard path meets the core: the reason to mirror at all.
        for link in standard.links[1:-1]:
            if rng.random() < 0.5:
                forecast[link] = 0.6 + 0.4 * rng.random()
    return forecast


def _time_plans(graph: NetworkGraph, samples: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    hosts = sorted(n.name for n in graph.nodes.values() if n.kind == "host")
    link_names = sorted(graph.links)
    budget = SessionBudget(rate_bytes_per_s=1_000_000, burst_bytes=64_000)

    def request(src: str, dst: str) -> MirrorRequest:
        return MirrorRequest(f"bench {src}>{dst}", src, dst, "rpc", "benchmark", budget, max_relay_hops=2)

    start = time.perf_counter_ns()
    plan_mirror(request(hosts[0], hosts[-1]), graph, {}, now=0.0)
    cold_us = (time.perf_counter_ns() - start) / 1000
    # Warm the per-version caches for every pair the samples may use, as a node does after a graph
    # change (`precompute`); the cost of that is reported too.
    overlay_nodes = hosts + list(graph.relays())
    start = time.perf_counter_ns()
    graph.precompute(overlay_nodes, overlay_nodes)
    graph.bridges()
    precompute_ms = (time.perf_counter_ns() - start) / 1e6

    timings_us: list[float] = []
    cpu_us: list[float] = []  # this thread's CPU time: what the code costs when others load the machine
    outcomes = {"disjoint": 0, "least-shared": 0, "no-plan": 0}
    causes: dict[str, int] = {}
    for _ in range(samples):
        src, dst = rng.sample(hosts, 2)
        forecast = _forecast(graph, src, dst, rng, link_names)
        req = request(src, dst)
        start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        result = plan_mirror(req, graph, forecast, now=1.0)
        cpu_us.append((time.thread_time_ns() - start_cpu) / 1000)
        timings_us.append((time.perf_counter_ns() - start) / 1000)
        if isinstance(result, MirrorPlan):
            outcomes[result.method] += 1
        else:
            assert isinstance(result, NoPlan)
            outcomes["no-plan"] += 1
            causes[result.cause] = causes.get(result.cause, 0) + 1
    timings_us.sort()
    cpu_us.sort()
    return {
        "samples": samples,
        "p50_us": round(statistics.median(timings_us), 1),
        "p99_us": _percentile(timings_us, 0.99),
        "max_us": round(timings_us[-1], 1),
        "mean_us": round(statistics.fmean(timings_us), 1),
        "cpu_p50_us": round(statistics.median(cpu_us), 1),
        "cpu_p99_us": _percentile(cpu_us, 0.99),
        "cold_first_plan_us": round(cold_us, 1),
        "precompute_all_pairs_ms": round(precompute_ms, 1),
        "outcomes": outcomes,
        "no_plan_causes": causes,
    }


def _percentile(ordered: list[float], fraction: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 1)


def run(samples: int = 2000, seed: int = 7, routings: tuple[Routing, ...] = ("lab", "least-cost")) -> dict[str, Any]:
    """p50/p99 of `plan_mirror` in microseconds, per routing model of the underlay."""
    spec = fat_tree_with_relays()
    results: dict[str, Any] = {
        "topology": {"k": 8, "nodes": len(spec.nodes), "links": len(spec.links),
                     "relays": list(RELAY_ATTACHMENTS), "target_p99_us": 2000},
    }
    for routing in routings:
        start = time.perf_counter()
        graph = NetworkGraph.from_lab_spec(spec, routing=routing)
        build_s = time.perf_counter() - start
        timing = _time_plans(graph, samples, seed)
        timing["graph_build_s"] = round(build_s, 3)
        results[f"routing_{routing.replace('-', '_')}"] = timing
    lab = results.get("routing_lab") or next(v for k, v in results.items() if k.startswith("routing_"))
    results["p50_us"], results["p99_us"] = lab["p50_us"], lab["p99_us"]
    results["cpu_p50_us"], results["cpu_p99_us"] = lab["cpu_p50_us"], lab["cpu_p99_us"]
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
