"""The network graph: underlay routing, hosts that never transit, overlay metrics with a TTL, caches."""

from __future__ import annotations

import networkx as nx
import pytest

from topomirror.lab.generate import fat_tree
from topomirror.lab.plan import compile_lab
from topomirror.lab.spec import LabSpec, parse_lab
from topomirror.topology.graph import GraphError, NetworkGraph

from .graphs import build, diamond

LAB = """
name: two-way
nodes:
  h1: {kind: host}
  h2: {kind: host}
  r1: {kind: router}
  r2: {kind: router}
  x1: {kind: relay}
links:
  - endpoints: ["h1:eth1", "r1:eth1"]
    bw: 100mbit
  - endpoints: ["r1:eth2", "r2:eth1"]
    name: fast
    bw: 1gbit
  - endpoints: ["r1:eth3", "x1:eth1"]
    cost: 3
  - endpoints: ["x1:eth2", "r2:eth2"]
    cost: 3
  - endpoints: ["r2:eth3", "h2:eth1"]
    bw: 50mbit
"""


def test_routed_segment_follows_least_cost_and_reports_capacity() -> None:
    graph = NetworkGraph.from_lab_spec(parse_lab(LAB))
    segment = graph.segment("h1", "h2")
    assert segment is not None
    assert segment.nodes == ("h1", "r1", "r2", "h2")
    assert segment.links == ("h1-r1", "fast", "r2-h2")
    assert segment.cost == 3
    assert segment.capacity_bps == 50_000_000  # the narrowest link
    assert graph.kind("x1") == "relay"


def test_hosts_never_transit() -> None:
    graph = build({"h1": "host", "h2": "host", "h3": "host", "r1": "router"},
                  ("h1", "h2"), ("h2", "h3"), ("h1", "r1", 5), ("r1", "h3", 5))
    segment = graph.segment("h1", "h3")
    assert segment is not None
    assert segment.nodes == ("h1", "r1", "h3")  # not the cheaper h1-h2-h3 through a host
    line = build({"h1": "host", "h2": "host", "h3": "host"}, ("h1", "h2"), ("h2", "h3"))
    assert line.segment("h1", "h3") is None


@pytest.mark.parametrize("routing", ["lab", "least-cost"])
def test_lab_routing_matches_the_routes_a_deploy_installs(routing: str) -> None:
    spec = LabSpec.model_validate(fat_tree(4))
    graph = NetworkGraph.from_lab_spec(spec, routing=routing)  # type: ignore[arg-type]
    plan = compile_lab(spec)
    hosts = [n for n in spec.nodes if spec.nodes[n].kind == "host"]
    for src in hosts:
        for dst in hosts:
            if src == dst:
                continue
            segment = graph.segment(src, dst)
            assert segment is not None
            # Least cost either way; with lab routing also the very same links, ECMP ties included.
            others = [h for h in hosts if h not in (src, dst)]
            assert segment.cost == nx.shortest_path_length(graph.nx_graph().subgraph(
                set(spec.nodes) - set(others)), src, dst, weight="weight")
            if routing == "lab":
                node, walked = src, []
                loopback = plan.nodes[dst].loopback
                while node != dst:
                    route = next(r for r in plan.nodes[node].routes if loopback in r.dst)
                    iface = plan.nodes[node].ifaces[route.dev]
                    walked.append(iface.link)
                    node = iface.peer_node
                assert segment.links == tuple(walked)


def test_route_overrides_are_honoured_with_lab_routing() -> None:
    spec = parse_lab(LAB.replace("  r1: {kind: router}", "  r1: {kind: router, routes: [{dst: h2, via: x1}]}"))
    segment = NetworkGraph.from_lab_spec(spec).segment("h1", "h2")
    assert segment is not None and segment.nodes == ("h1", "r1", "x1", "r2", "h2")
    assert NetworkGraph.from_lab_spec(spec, routing="least-cost").segment("h1", "h2").nodes == (  # type: ignore[union-attr]
        "h1", "r1", "r2", "h2")


def test_link_down_with_static_routes_breaks_the_segment_and_least_cost_reroutes() -> None:
    spec = parse_lab(LAB)
    static, dynamic = NetworkGraph.from_lab_spec(spec), NetworkGraph.from_lab_spec(spec, routing="least-cost")
    for graph in (static, dynamic):
        version = graph.version
        assert graph.set_link_up("fast", False) is True
        assert graph.set_link_up("fast", False) is False  # no change, no new version
        assert graph.version == version + 1
    assert static.segment("h1", "h2") is None  # the lab's routes are static: traffic is blackholed
    rerouted = dynamic.segment("h1", "h2")
    assert rerouted is not None and rerouted.nodes == ("h1", "r1", "x1", "r2", "h2")
    dynamic.set_link_up("fast", True)
    assert dynamic.segment("h1", "h2").links[1] == "fast"  # type: ignore[union-attr]


def test_dead_node_breaks_paths_through_it_and_leaves_the_relay_list() -> None:
    graph = diamond(relay_cost=1)
    assert graph.relays() == ("x1",)
    graph.set_node_up("x1", False)
    assert graph.relays() == ()
    assert graph.segment("h1", "x1") is None
    assert not graph.link_up("e1-x1")
    graph.set_node_up("x1", True)
    assert graph.relays() == ("x1",)


def test_overlay_metrics_expire_after_the_ttl() -> None:
    graph = diamond()
    graph.update_overlay("h1", "x1", relative_delay_us=300, loss=0.01, available_bps=5e6, now=10.0)
    assert graph.overlay("h1", "x1", now=10.5) is not None
    assert graph.overlay("h1", "x1", now=10.5).relative_delay_us == 300  # type: ignore[union-attr]
    assert graph.overlay("h1", "x1", now=11.01) is None  # older than the 1 s TTL
    assert graph.overlay("x1", "h1", now=10.5) is None  # edges are directed: one-way measurements


@pytest.mark.parametrize("kwargs, message", [
    ({"relative_delay_us": 1, "loss": 1.5, "now": 0}, "loss must be a fraction"),
    ({"relative_delay_us": -1, "loss": 0, "now": 0}, "relative delay"),
    ({"relative_delay_us": 1, "loss": 0, "now": 0, "available_bps": -5}, "available bandwidth"),
])
def test_bad_overlay_updates_are_rejected(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(GraphError, match=message):
        diamond().update_overlay("h1", "x1", **kwargs)  # type: ignore[arg-type]


def test_bad_structure_is_rejected_with_the_name() -> None:
    graph = diamond()
    with pytest.raises(GraphError, match="unknown node 'zz'"):
        graph.add_link("x", "h1", "zz")
    with pytest.raises(GraphError, match="already exists"):
        graph.add_node("h1", "host")
    with pytest.raises(GraphError, match="unknown kind"):
        graph.add_node("q", "switch")  # type: ignore[arg-type]
    with pytest.raises(GraphError, match="unknown link"):
        graph.set_link_up("nope", False)
    with pytest.raises(GraphError, match="unknown node"):
        graph.segment("h1", "nope")


def test_structural_changes_invalidate_cached_segments() -> None:
    graph = diamond()
    assert graph.segment("h1", "h3").nodes[2] == "core"  # type: ignore[union-attr]
    graph.add_node("core2", "router")
    graph.add_link("e1-core2", "e1", "core2")
    graph.add_link("core2-e2", "core2", "e2")
    graph.set_link_up("e1-core", False)
    assert graph.segment("h1", "h3").nodes[2] == "core2"  # type: ignore[union-attr]


def test_bridges_are_the_links_every_path_must_share() -> None:
    graph = diamond()
    assert graph.bridges() == {"h1-e1", "h2-e1", "e2-h3", "e2-h4"}
