"""The compiled plan: addresses, names and least-cost routes, without touching the system."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from topomirror.lab.generate import fat_tree, ring
from topomirror.lab.plan import compile_lab
from topomirror.lab.spec import LabFileError, LabSpec, RouteOverride, load_lab, parse_lab

EXAMPLES = Path(__file__).parents[3] / "examples" / "labs"


def _route(plan, node: str, dst: str):  # type: ignore[no-untyped-def]
    network = ipaddress.ip_network(dst)
    return next(r for r in plan.nodes[node].routes if r.dst == network)


def test_two_path_routes_use_the_direct_link() -> None:
    plan = compile_lab(load_lab(EXAMPLES / "two-path.yaml"))
    h2 = str(plan.address_of("h2"))
    route = _route(plan, "h1", f"{h2}/32")
    assert route.dev == "eth1"
    assert route.gateway == plan.nodes["h2"].ifaces["eth1"].address.ip
    # r1 reaches h2 over its own link
    assert _route(plan, "r1", f"{h2}/32").dev == "eth2"


def test_hosts_never_transit() -> None:
    # h1 -- h2 -- h3 in a line: h1 has no route to h3 because h2 is a host.
    spec = parse_lab("""
name: line
nodes: {h1: {}, h2: {}, h3: {}}
links:
  - endpoints: ["h1:eth1", "h2:eth1"]
  - endpoints: ["h2:eth2", "h3:eth1"]
""")
    plan = compile_lab(spec)
    h3 = plan.nodes["h3"].loopback
    assert all(r.dst != ipaddress.ip_network(f"{h3}/32") for r in plan.nodes["h1"].routes)


def test_cost_steers_routes_and_override_wins() -> None:
    plan = compile_lab(load_lab(EXAMPLES / "diamond.yaml"))
    h3 = f"{plan.address_of('h3')}/32"
    assert _route(plan, "e1", h3).dev == "eth3"  # the core link, not the costly relay path
    spec = load_lab(EXAMPLES / "diamond.yaml")
    spec.nodes["e1"].routes.append(RouteOverride(dst="h3", via="x1"))
    plan = compile_lab(spec)
    route = _route(plan, "e1", h3)
    assert (route.dev, route.source) == ("eth4", "override")


def test_addresses_are_unique_and_explicit_ones_kept() -> None:
    spec = parse_lab("""
name: addr
nodes: {a: {kind: router}, b: {kind: router}, c: {kind: router}}
links:
  - {endpoints: ["a:eth1", "b:eth1"], addresses: ["10.99.0.1/30", "10.99.0.2/30"]}
  - {endpoints: ["b:eth2", "c:eth1"]}
  - {endpoints: ["c:eth2", "a:eth2"]}
""")
    plan = compile_lab(spec)
    addrs = [i.address.ip for n in plan.nodes.values() for i in n.ifaces.values()]
    assert len(addrs) == len(set(addrs)) == 6
    assert str(plan.nodes["a"].ifaces["eth1"].address) == "10.99.0.1/30"


def test_subnet_exhaustion_is_a_clear_error() -> None:
    data = ring(12)
    data["subnet"] = "10.99.0.0/29"
    with pytest.raises(LabFileError, match="too small"):
        compile_lab(LabSpec.model_validate(data))


@pytest.mark.parametrize("k", [2, 4, 6])
def test_fat_tree_every_host_reaches_every_host(k: int) -> None:
    plan = compile_lab(LabSpec.model_validate(fat_tree(k)))
    hosts = [n for n in plan.nodes.values() if n.kind == "host"]
    assert len(hosts) == k**3 // 4
    for host in hosts:
        reached = {r.dst for r in host.routes}
        for other in hosts:
            if other is not host:
                assert ipaddress.ip_network(f"{other.loopback}/32") in reached


def test_examples_are_valid() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert {f.name for f in files} >= {"two-path.yaml", "diamond.yaml", "fat-tree-k4.yaml"}
    for file in files:
        compile_lab(load_lab(file))
