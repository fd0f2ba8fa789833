"""Compile a `LabSpec` into a concrete, side-effect-free `LabPlan`.

The plan fixes every name, address and route that deployment will create, so that
`inspect`, `check` and tests can see exactly what a deploy would do without touching the system.

Routing: each node gets a /32 loopback; every link a /30 (unless given). Routes to every
other node's loopback and every non-attached link subnet follow least-cost paths over the
link graph (`cost` per link, default 1). Hosts never transit traffic: only routers and relays
appear in the middle of a path. A node's `routes:` overrides replace the computed route.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import networkx as nx

from topomirror.lab.spec import LabFileError, LabSpec, LinkSpec


@dataclass(frozen=True)
class IfacePlan:
    node: str
    name: str
    address: ipaddress.IPv4Interface
    link: str
    peer_node: str
    peer_iface: str
    peer_address: ipaddress.IPv4Interface
    mtu: int


@dataclass(frozen=True)
class RoutePlan:
    dst: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    dev: str
    source: str  # "computed" or "override"


@dataclass
class NodePlan:
    name: str
    kind: str
    namespace: str
    loopback: ipaddress.IPv4Address
    ifaces: dict[str, IfacePlan] = field(default_factory=dict)
    routes: list[RoutePlan] = field(default_factory=list)


@dataclass(frozen=True)
class LinkPlan:
    index: int
    name: str
    a: IfacePlan
    b: IfacePlan
    spec: LinkSpec


@dataclass
class LabPlan:
    spec: LabSpec
    prefix: str  # namespace prefix, e.g. "tm-two-path-"
    nodes: dict[str, NodePlan]
    links: list[LinkPlan]

    def namespace(self, node: str) -> str:
        try:
            return self.nodes[node].namespace
        except KeyError:
            raise LabFileError(
                f"lab {self.spec.name!r} has no node {node!r} (nodes: {', '.join(self.nodes)})"
            ) from None

    def address_of(self, node: str) -> ipaddress.IPv4Address:
        """The address a node is reached at (its loopback)."""
        return self.nodes[node].loopback

    def link(self, name: str) -> LinkPlan:
        return self.links[self.spec.link_index(name)]


def lab_prefix(lab_name: str) -> str:
    return f"tm-{lab_name}-"


def _allocate_subnets(spec: LabSpec) -> list[ipaddress.IPv4Network]:
    taken = {
        link.addresses[0].network
        for link in spec.links
        if link.addresses is not None
    }
    pool = (net for net in spec.subnet.subnets(new_prefix=30) if net not in taken)
    out = []
    for index, link in enumerate(spec.links):
        if link.addresses is not None:
            out.append(link.addresses[0].network)
            continue
        try:
            out.append(next(pool))
        except StopIteration:
            raise LabFileError(
                f"lab {spec.name!r}: subnet {spec.subnet} is too small for {len(spec.links)} "
                f"links (ran out at link {index}); choose a larger 'subnet'"
            ) from None
    return out


def compile_lab(spec: LabSpec) -> LabPlan:
    prefix = lab_prefix(spec.name)
    hosts = list(spec.loopback_subnet.hosts())
    explicit = {n.loopback for n in spec.nodes.values() if n.loopback}
    free = (a for a in hosts if a not in explicit)
    nodes: dict[str, NodePlan] = {}
    for name, node in spec.nodes.items():
        loop = node.loopback or next(free)
        nodes[name] = NodePlan(name, node.kind, prefix + name, loop)

    links: list[LinkPlan] = []
    for index, (link, subnet) in enumerate(zip(spec.links, _allocate_subnets(spec), strict=True)):
        a_end, b_end = link.endpoints
        if link.addresses is not None:
            a_addr, b_addr = link.addresses
        else:
            first, second = list(subnet.hosts())[:2]
            a_addr = ipaddress.IPv4Interface(f"{first}/{subnet.prefixlen}")
            b_addr = ipaddress.IPv4Interface(f"{second}/{subnet.prefixlen}")
        name = spec.link_name(index)
        a = IfacePlan(a_end.node, a_end.iface, a_addr, name, b_end.node, b_end.iface, b_addr,
                      link.mtu)
        b = IfacePlan(b_end.node, b_end.iface, b_addr, name, a_end.node, a_end.iface, a_addr,
                      link.mtu)
        nodes[a.node].ifaces[a.name] = a
        nodes[b.node].ifaces[b.name] = b
        links.append(LinkPlan(index, name, a, b, link))

    plan = LabPlan(spec, prefix, nodes, links)
    _compute_routes(plan)
    return plan


def _compute_routes(plan: LabPlan) -> None:
    spec = plan.spec
    # Directed graph; for parallel links keep the cheapest (first on ties).
    graph = nx.DiGraph()
    graph.add_nodes_from(spec.nodes)
    for link in plan.links:
        for src, dst in ((link.a, link.b), (link.b, link.a)):
            current = graph.get_edge_data(src.node, dst.node)
            if current is None or link.spec.cost < current["weight"]:
                graph.add_edge(src.node, dst.node, weight=link.spec.cost, out=src)

    # Destinations: each node's loopback, and each link subnet (owned by both its ends).
    destinations: list[tuple[ipaddress.IPv4Network, set[str]]] = [
        (ipaddress.IPv4Network(f"{n.loopback}/32"), {n.name}) for n in plan.nodes.values()
    ]
    for link in plan.links:
        destinations.append((link.a.address.network, {link.a.node, link.b.node}))

    for source in plan.nodes.values():
        # Hosts other than the source do not forward: drop their outgoing edges.
        view = nx.subgraph_view(
            graph,
            filter_edge=lambda u, v, s=source.name: u == s or spec.nodes[u].forwards,
        )
        distance, paths = nx.single_source_dijkstra(view, source.name)
        overrides = {
            _override_dst(plan, o.dst): o for o in spec.nodes[source.name].routes
        }
        attached = {i.address.network for i in source.ifaces.values()}
        for network, owners in destinations:
            if source.name in owners or network in attached:
                continue
            if network in overrides:
                continue
            reachable = [o for o in owners if o in distance]
            if not reachable:
                continue
            target = min(reachable, key=lambda o: (distance[o], o))
            first_hop = paths[target][1]
            out: IfacePlan = graph.edges[source.name, first_hop]["out"]
            source.routes.append(RoutePlan(network, out.peer_address.ip, out.name, "computed"))
        for network, override in overrides.items():
            source.routes.append(_resolve_override(plan, source, network, override.via))


def _override_dst(plan: LabPlan, dst: str) -> ipaddress.IPv4Network:
    if dst in plan.nodes:
        return ipaddress.IPv4Network(f"{plan.nodes[dst].loopback}/32")
    return ipaddress.IPv4Network(dst, strict=False)  # the spec checked it is one


def _resolve_override(plan: LabPlan, node: NodePlan, network: ipaddress.IPv4Network,
                      via: str) -> RoutePlan:
    if via in plan.nodes:
        for iface in node.ifaces.values():
            if iface.peer_node == via:
                return RoutePlan(network, iface.peer_address.ip, iface.name, "override")
    else:
        gateway = ipaddress.IPv4Address(via)
        for iface in node.ifaces.values():
            if gateway in iface.address.network:
                return RoutePlan(network, gateway, iface.name, "override")
    raise LabFileError(
        f"node {node.name!r}: route override to {network} via {via!r}: no interface of "
        f"{node.name!r} reaches {via!r} directly"
    )
