"""Small graphs for the topology tests, each built in a few lines."""

from __future__ import annotations

from topomirror.topology.budget import SessionBudget
from topomirror.topology.graph import NetworkGraph, NodeKind, UnderlayLink
from topomirror.topology.request import MirrorRequest

BUDGET = SessionBudget(rate_bytes_per_s=125_000, burst_bytes=32_000)  # 1 Mbit/s


def build(nodes: dict[str, NodeKind], *links: tuple[str, str] | tuple[str, str, int],
          capacities: dict[str, int] | None = None) -> NetworkGraph:
    """Links are (a, b) or (a, b, cost), named "a-b"."""
    capacities = capacities or {}
    described = []
    for link in links:
        a, b = link[0], link[1]
        cost = link[2] if len(link) == 3 else 1  # type: ignore[misc]
        described.append(UnderlayLink(f"{a}-{b}", a, b, cost, capacities.get(f"{a}-{b}")))
    return NetworkGraph.from_description(nodes, described)


def diamond(relay_cost: int = 2) -> NetworkGraph:
    """h1,h2 - e1 - core - e2 - h3,h4, with relay x1 between e1 and e2 (dearer, so routing uses core)."""
    return build(
        {"h1": "host", "h2": "host", "h3": "host", "h4": "host",
         "e1": "router", "e2": "router", "core": "router", "x1": "relay"},
        ("h1", "e1"), ("h2", "e1"), ("e1", "core"), ("core", "e2"), ("e2", "h3"), ("e2", "h4"),
        ("e1", "x1", relay_cost), ("x1", "e2", relay_cost),
    )


def request(src: str = "h1", dst: str = "h3", max_relay_hops: int = 2, budget: SessionBudget = BUDGET,
            flow_key: str = "udp 10.0.0.1:5000>10.0.0.3:80") -> MirrorRequest:
    return MirrorRequest(flow_key, src, dst, "rpc", "predicted congestion on core", budget,
                         max_relay_hops=max_relay_hops)
