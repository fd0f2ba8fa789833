"""Path computation for mirror sessions (pure: graph, forecast and `now` in; a plan out).

Only relay nodes run the forwarder, and between two overlay nodes packets follow the underlay's
routing. So a mirror path is an ordered list of relays, src -> r1 -> ... -> rk -> dst, and the
underlay links it uses are the routed segments between consecutive overlay nodes
(`NetworkGraph.segment`). Planning searches that small overlay graph (src, the alive relays, dst):

1. **Fast heuristic**: drop every overlay hop whose routed segment crosses a link predicted to
   congest (forecast probability above the threshold), lacks the required bandwidth, is measured
   dead, or shares an *avoidable* link with the standard path (shared links that are bridges, such as
   a host's only access link, are unavoidable), then take the cheapest path with 1..max_relay_hops relays.
2. **Fallback** when no such path exists: the same search, but sharing is allowed and minimised
   first (lexicographic: shared links, then cost). With the standard path fixed by routing this *is*
   the min-cost-flow answer for the second unit of flow, so it gives the most disjoint mirror the
   relays can realise.

Suurballe's algorithm (`disjoint_pair`) answers a different question: whether the underlay has two
edge-disjoint paths at all, ignoring where relays are. A mirror that must share links gets that as a
hint in its reason ("a relay on a2x1 or c9 would give a disjoint mirror").

Results are `MirrorPlan` or `NoPlan(cause, reason)`; both carry a human-readable reason.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

from topomirror.topology.graph import NetworkGraph, Segment, overlay_link
from topomirror.topology.request import MirrorRequest


@dataclass(frozen=True)
class PlanningPolicy:
    congestion_threshold: float = 0.5  # links predicted to congest with p above this are never used
    dead_loss: float = 0.5  # an overlay edge measured this lossy (fresh) counts as down
    require_disjoint: bool = False  # refuse plans that share avoidable links with the standard path
    explain_sharing: bool = True  # on a shared plan, run Suurballe to hint where a relay would help


DEFAULT_POLICY = PlanningPolicy()

NoPlanCause = Literal[
    "unknown-node",  # src or dst not in the graph
    "no-relay",  # no alive relay other than src/dst
    "congested-bottleneck",  # every mirror path crosses a link predicted to congest
    "bandwidth",  # no relay path has the required bandwidth
    "hop-limit",  # a path exists but needs more relays than allowed
    "not-disjoint",  # policy requires disjointness and only sharing paths exist
    "no-diversity",  # the best mirror would cross every link of the standard path: no second path at all
    "unreachable",  # no relay path reaches dst at all (links down, relays dead)
]


@dataclass(frozen=True)
class OverlayHop:
    """One hop between overlay nodes and the underlay path routing gives it."""

    src: str
    dst: str
    links: tuple[str, ...]
    underlay_nodes: tuple[str, ...]


@dataclass(frozen=True)
class MirrorPlan:
    src: str
    dst: str
    relays: tuple[str, ...]  # in order; each installs one virtual connection
    hops: tuple[OverlayHop, ...]  # len(relays) + 1
    mirror_links: tuple[str, ...]  # every underlay link the mirror crosses, in order
    standard_links: tuple[str, ...]  # the standard path's links ([] if it is unreachable)
    shared_links: tuple[str, ...]  # links on both paths (ideally none, or only unavoidable ones)
    unavoidable_links: tuple[str, ...]  # shared links every path must cross (bridges)
    avoided_links: tuple[str, ...]  # standard-path links predicted to congest, which the mirror avoids
    cost: int
    max_risk: float  # highest congestion probability on a mirror link (all <= threshold)
    disjoint: bool  # shares nothing beyond the unavoidable links
    method: Literal["disjoint", "least-shared"]  # which stage found it
    graph_version: int
    reason: str

    @property
    def overlay_nodes(self) -> tuple[str, ...]:
        return (self.src, *self.relays, self.dst)

    @property
    def first_hop(self) -> str:
        return self.relays[0]

    def next_hop(self, relay: str) -> str:
        """Where `relay` forwards the mirror copy."""
        nodes = self.overlay_nodes
        return nodes[nodes.index(relay) + 1]

    def same_route(self, other: MirrorPlan) -> bool:
        """Same relays and underlay links: re-installing would change nothing."""
        return self.relays == other.relays and self.mirror_links == other.mirror_links

    @property
    def exclusive_links(self) -> tuple[str, ...]:
        """Mirror links not shared with the standard path: where a mirror-only problem must be."""
        shared = set(self.shared_links)
        return tuple(link for link in self.mirror_links if link not in shared)


@dataclass(frozen=True)
class NoPlan:
    cause: NoPlanCause
    reason: str


@dataclass(frozen=True)
class DisjointPair:
    first: Segment
    second: Segment


# -- standard path ----------------------------------------------------------------------------------

def standard_path(graph: NetworkGraph, src: str, dst: str, *, now: float | None = None) -> Segment | None:
    """The path the flow takes without a mirror: the routed underlay path, or the direct overlay edge
    when the underlay is unknown (needs `now` to judge the measurement's freshness)."""
    return _carrier(graph, src, dst, now)


def _carrier(graph: NetworkGraph, src: str, dst: str, now: float | None) -> Segment | None:
    if graph.has_underlay(src) and graph.has_underlay(dst):
        # The underlay is known: routing decides, and an unreachable pair stays unreachable.
        return graph.segment(src, dst)
    if now is None or not (graph.node_up(src) and graph.node_up(dst)):
        return None
    metrics = graph.overlay(src, dst, now)
    if metrics is None or metrics.loss >= 1.0:
        return None
    return Segment(src, dst, (src, dst), (overlay_link(src, dst),), 1, metrics.available_bps)


# -- mirror planning --------------------------------------------------------------------------------

class _HopFacts(NamedTuple):
    """One overlay hop, judged against this request (constraints as flags, so relaxed re-runs reuse it).
    A NamedTuple, not a frozen dataclass: it is built ~70 times per plan and that is 3x cheaper."""

    segment: Segment
    shared: int  # avoidable links also on the standard path (unavoidable ones are common to every path)
    risk: float  # summed congestion probability of its links
    delay_us: float  # measured relative delay, 0 if not measured
    blocked: bool  # crosses a link predicted to congest (or one to avoid)
    narrow: bool  # lacks the required bandwidth


_Key = tuple[float, float, float, float]  # shared links, cost, summed risk, summed measured delay
_NO_KEY: _Key = (math.inf, math.inf, math.inf, math.inf)
_UNUSABLE = None  # memo value for a hop that does not exist or is measured dead


class _Search:
    """The overlay search for one request; hop facts are memoised across its stages and diagnostics."""

    def __init__(self, graph: NetworkGraph, request: MirrorRequest, forecast: Mapping[str, float],
                 blocked: frozenset[str], relays: tuple[str, ...], avoidable_shared: frozenset[str],
                 now: float, policy: PlanningPolicy) -> None:
        self.graph, self.request, self.forecast = graph, request, forecast
        self.blocked, self.relays, self.avoidable_shared = blocked, relays, avoidable_shared
        self.now, self.policy = now, policy
        self.required_bps = request.required_bps
        self._forecast_links = frozenset(forecast)
        self._hops: dict[tuple[str, str], _HopFacts | None] = {}

    def hop(self, src: str, dst: str) -> _HopFacts | None:
        key = (src, dst)
        try:
            return self._hops[key]
        except KeyError:
            facts = self._hops[key] = self._evaluate(src, dst)
            return facts

    def _evaluate(self, src: str, dst: str) -> _HopFacts | None:
        segment = _carrier(self.graph, src, dst, self.now)
        if segment is None:
            return _UNUSABLE
        links = segment.link_set
        required = self.required_bps
        narrow = bool(required) and segment.capacity_bps is not None and segment.capacity_bps < required
        delay_us = 0.0
        measured = self.graph.overlay(src, dst, self.now)
        if measured is not None:
            if measured.loss >= self.policy.dead_loss:
                return _UNUSABLE
            narrow = narrow or (measured.available_bps is not None and measured.available_bps < required)
            delay_us = measured.relative_delay_us
        # Set operations run in C; the common case (nothing shared, nothing forecast) costs two of them.
        shared = 0 if links.isdisjoint(self.avoidable_shared) else len(links & self.avoidable_shared)
        risk = 0.0
        if not links.isdisjoint(self._forecast_links):
            risk = sum(self.forecast[link] for link in links & self._forecast_links)
        return _HopFacts(segment, shared, risk, delay_us, not links.isdisjoint(self.blocked), narrow)

    def run(self, max_relays: int, forbidden_shared: frozenset[str], *, honour_blocked: bool = True,
            honour_bandwidth: bool = True) -> list[_HopFacts] | None:
        """Cheapest src -> relays -> dst by (shared, cost, risk, delay) with 1..max_relays relays;
        hops crossing `forbidden_shared` are skipped (the strict stage).

        Dijkstra over (overlay node, relays used). Relay -> relay hops are only judged when a lower
        bound on the path through them (exact routed costs of the hop and, on the last level, of the final
        hop: `NetworkGraph.hop_cost`) can still beat the best complete path found so far; that pruning is
        exact and skips most of them."""
        src, dst = self.request.src, self.request.dst
        start = (src, 0)
        best: dict[tuple[str, int], _Key] = {start: (0, 0, 0.0, 0.0)}
        parent: dict[tuple[str, int], tuple[tuple[str, int], _HopFacts]] = {}
        heap: list[tuple[_Key, str, int]] = [((0, 0, 0.0, 0.0), src, 0)]
        bound: _Key = _NO_KEY  # best key of a complete path pushed so far

        def usable(facts: _HopFacts | None) -> bool:
            return not (facts is None or (honour_blocked and facts.blocked) or (honour_bandwidth and facts.narrow)
                        or (forbidden_shared and not forbidden_shared.isdisjoint(facts.segment.link_set)))

        while heap:
            key, node, used = heapq.heappop(heap)
            if best.get((node, used)) != key:
                continue
            if node == dst:
                chain: list[_HopFacts] = []
                state = (node, used)
                while state != start:
                    state, link_facts = parent[state]
                    chain.append(link_facts)
                return chain[::-1]
            # Finishing first tightens the bound before the relay -> relay hops are considered.
            if used >= 1:
                final = self.hop(node, dst)
                if final is not None and usable(final):
                    new_key = (key[0] + final.shared, key[1] + final.segment.cost,
                               key[2] + final.risk, key[3] + final.delay_us)
                    if new_key < best.get((dst, used), _NO_KEY):
                        best[(dst, used)] = new_key
                        parent[(dst, used)] = ((node, used), final)
                        heapq.heappush(heap, (new_key, dst, used))
                        bound = min(bound, new_key)
            if used >= max_relays:
                continue
            last_level = used + 1 == max_relays
            hop_cost = self.graph.hop_cost
            for relay in self.relays:
                if relay == node:
                    continue
                # Exact costs of this hop and (last level) of the final one: a lower bound on the path.
                lower = key[1] + hop_cost(node, relay) + (hop_cost(relay, dst) if last_level else 1.0)
                if key[0] > bound[0] or (key[0] == bound[0] and lower > bound[1]):
                    continue
                facts = self.hop(node, relay)
                if facts is None or not usable(facts):
                    continue
                new_key = (key[0] + facts.shared, key[1] + facts.segment.cost,
                           key[2] + facts.risk, key[3] + facts.delay_us)
                state = (relay, used + 1)
                if new_key < best.get(state, _NO_KEY):
                    best[state] = new_key
                    parent[state] = ((node, used), facts)
                    heapq.heappush(heap, (new_key, relay, used + 1))
        return None


def plan_mirror(request: MirrorRequest, graph: NetworkGraph, forecast: Mapping[str, float], *, now: float,
                policy: PlanningPolicy = DEFAULT_POLICY, standard: Segment | None = None,
                avoid_links: Collection[str] = (), avoid_relays: Collection[str] = ()) -> MirrorPlan | NoPlan:
    """Plan the mirror path for `request`.

    `forecast` maps link names (underlay, or `overlay_link(a, b)` for overlay-only edges) to the
    predicted probability that they congest within the horizon. `standard` overrides the computed
    standard path (e.g. a measured traceroute). `avoid_links` / `avoid_relays` are treated like
    congested links / dead relays (re-routing away from a degraded mirror)."""
    src, dst = request.src, request.dst
    for name in (src, dst):
        if name not in graph.nodes:
            return NoPlan("unknown-node", f"{name!r} is not in the topology (graph version {graph.version})")
    if standard is None:
        standard = standard_path(graph, src, dst, now=now)
    standard_links = frozenset(standard.links) if standard else frozenset()
    threshold = policy.congestion_threshold
    congested = {link: p for link, p in forecast.items() if p > threshold}
    blocked = frozenset(congested).union(avoid_links)
    excluded_relays = set(avoid_relays)
    relays = tuple(r for r in graph.relays() if r != src and r != dst and r not in excluded_relays)
    if not relays:
        dead = [n.name for n in graph.nodes.values() if n.kind == "relay" and not graph.node_up(n.name)]
        detail = f" ({', '.join(dead)} down)" if dead else ""
        return NoPlan("no-relay", f"no usable relay for {src} -> {dst}{detail}")

    unavoidable: frozenset[str] = frozenset()
    if standard_links:
        unavoidable = standard_links & graph.bridges()
    stuck = [link for link in (standard.links if standard else ()) if link in unavoidable and link in blocked]
    if stuck:
        # Every path between src and dst crosses these bridges: no mirror can avoid them, and a copy
        # would only add load to them. Cheap to see, so skip the search.
        crossed = ", ".join(f"{link} (p={congested[link]:.2f})" if link in congested else link for link in stuck)
        return NoPlan("congested-bottleneck",
                      f"every path from {src} to {dst} crosses {crossed}: a mirror cannot avoid it")
    avoidable = standard_links - unavoidable
    search = _Search(graph, request, forecast, blocked, relays, avoidable, now, policy)
    chain = search.run(request.max_relay_hops, avoidable)
    method: Literal["disjoint", "least-shared"] = "disjoint"
    if chain is None:
        method = "least-shared"
        chain = search.run(request.max_relay_hops, frozenset())
    if chain is None:
        return _diagnose(request, search, congested)

    relay_names = tuple(estimate.segment.dst for estimate in chain[:-1])
    hops = tuple(OverlayHop(e.segment.src, e.segment.dst, e.segment.links, e.segment.nodes) for e in chain)
    mirror_links = tuple(link for hop in hops for link in hop.links)
    shared = tuple(dict.fromkeys(link for link in mirror_links if link in standard_links))
    shared_unavoidable = tuple(link for link in shared if link in unavoidable)
    disjoint = len(shared_unavoidable) == len(shared)
    if policy.require_disjoint and not disjoint:
        return NoPlan("not-disjoint", f"every relay path from {src} to {dst} shares "
                      f"{', '.join(link for link in shared if link not in unavoidable)} with the standard path")
    if standard is not None and len(shared) == len(standard_links):
        return NoPlan("no-diversity", f"every relay path from {src} to {dst} crosses all links of the standard "
                      "path: a mirror would add load without adding a path")
    avoided = tuple(link for link in (standard.links if standard else ()) if link in congested)
    max_risk = max((forecast.get(link, 0.0) for link in mirror_links), default=0.0)
    standard_links_ordered = standard.links if standard else ()
    reason = _explain((src, *relay_names, dst), standard is None, avoided, shared, shared_unavoidable, max_risk,
                      congested)
    if not disjoint and policy.explain_sharing:
        hint = _relay_hint(graph, src, dst, standard)
        reason = f"{reason}; {hint}" if hint else reason
    return MirrorPlan(
        src=src, dst=dst, relays=relay_names, hops=hops, mirror_links=mirror_links,
        standard_links=standard_links_ordered, shared_links=shared, unavoidable_links=shared_unavoidable,
        avoided_links=avoided, cost=sum(e.segment.cost for e in chain), max_risk=max_risk, disjoint=disjoint,
        method=method, graph_version=graph.version, reason=reason,
    )


def _explain(overlay_nodes: tuple[str, ...], standard_missing: bool, avoided: tuple[str, ...],
             shared: tuple[str, ...], unavoidable: tuple[str, ...], max_risk: float,
             congested: Mapping[str, float]) -> str:
    parts = [f"mirror {' > '.join(overlay_nodes)}"]
    if standard_missing:
        parts.append("the standard path is unreachable, so the mirror is the only path")
    else:
        if avoided:
            parts.append("avoids " + ", ".join(f"{link} (p={congested[link]:.2f})" for link in avoided)
                         + " on the standard path")
        if not shared:
            parts.append("fully disjoint from the standard path")
        elif len(shared) == len(unavoidable):
            parts.append(f"shares only {', '.join(shared)} (unavoidable)")
        else:
            avoidable = [link for link in shared if link not in unavoidable]
            parts.append(f"shares {', '.join(avoidable)} with the standard path: no relay path avoids it")
    if max_risk > 0:
        parts.append(f"highest predicted risk on the mirror {max_risk:.2f}")
    return "; ".join(parts)


def _relay_hint(graph: NetworkGraph, src: str, dst: str, standard: Segment | None) -> str:
    """Where a relay would make a disjoint mirror possible, from Suurballe's edge-disjoint pair between
    the ends of the standard path's avoidable part (its leading and trailing bridges are shared anyway)."""
    if standard is None:
        return ""
    bridges = graph.bridges()
    first, last = 0, len(standard.links)
    while first < last and standard.links[first] in bridges:
        first += 1
    while last > first and standard.links[last - 1] in bridges:
        last -= 1
    pair = disjoint_pair(graph, standard.nodes[first], standard.nodes[last])
    if pair is None:
        return f"the underlay has no two edge-disjoint paths between {standard.nodes[first]} and {standard.nodes[last]}"
    standard_links, standard_nodes = set(standard.links), set(standard.nodes)
    # The member of the pair that overlaps the standard path least is where a relay would help.
    other = min((pair.first, pair.second), key=lambda seg: len(standard_links.intersection(seg.links)))
    candidates = [n for n in other.nodes[1:-1] if graph.kind(n) != "host" and n not in standard_nodes]
    if not candidates:
        return ""
    return f"a relay on {' or '.join(candidates[:3])} would allow a disjoint mirror"


def _diagnose(request: MirrorRequest, search: _Search, congested: Mapping[str, float]) -> NoPlan:
    """Find out which constraint made planning fail (slow path: relaxed re-runs of the same search)."""
    src, dst = request.src, request.dst
    hops = request.max_relay_hops
    if search.run(hops, frozenset(), honour_blocked=False, honour_bandwidth=False) is None:
        if len(search.relays) > hops and search.run(
                len(search.relays), frozenset(), honour_blocked=False, honour_bandwidth=False) is not None:
            return NoPlan("hop-limit", f"a mirror from {src} to {dst} needs more than {hops} relay hop(s)")
        return NoPlan("unreachable", f"no relay path from {src} to {dst} (links down or relays unreachable)")
    if search.run(hops, frozenset(), honour_bandwidth=False) is None:
        names = _bottleneck(search, congested)
        crossed = ", ".join(f"{link} (p={congested[link]:.2f})" if link in congested else link for link in names)
        return NoPlan("congested-bottleneck",
                      f"every relay path from {src} to {dst} crosses a link to avoid: {crossed}")
    return NoPlan("bandwidth", f"no relay path from {src} to {dst} has {request.required_bps / 1e6:.1f} Mbit/s")


def _bottleneck(search: _Search, congested: Mapping[str, float]) -> list[str]:
    """Blocked links on every way out of src or every way into dst (a congested access link, typically);
    else every blocked link some relay hop would cross."""
    def blocked_on(src: str, dst: str) -> set[str]:
        facts = search.hop(src, dst)
        return set(facts.segment.link_set & search.blocked) if facts else set()

    src, dst = search.request.src, search.request.dst
    leaving = [blocked_on(src, relay) for relay in search.relays]
    entering = [blocked_on(relay, dst) for relay in search.relays]
    common = set.intersection(*leaving) | set.intersection(*entering)
    if not common:
        common = set().union(*leaving, *entering)
    return sorted(common, key=lambda link: (-congested.get(link, 1.0), link))[:4]


def plan_reroute(request: MirrorRequest, graph: NetworkGraph, forecast: Mapping[str, float], current: MirrorPlan,
                 *, now: float, policy: PlanningPolicy = DEFAULT_POLICY) -> MirrorPlan | NoPlan:
    """A different mirror for a session whose mirror path degraded: first avoid the links only the
    mirror uses (the trouble must be there, else the standard path would suffer too), then avoid its
    relays. NoPlan if nothing different exists; the caller keeps the current mirror then."""
    attempts = ((current.exclusive_links, ()), ((), current.relays))
    last: NoPlan | None = None
    for avoid_links, avoid_relays in attempts:
        result = plan_mirror(request, graph, forecast, now=now, policy=policy,
                             avoid_links=avoid_links, avoid_relays=avoid_relays)
        if isinstance(result, MirrorPlan) and not result.same_route(current):
            return result
        last = result if isinstance(result, NoPlan) else last
    reason = last.reason if last else "the only usable mirror is the current one"
    return NoPlan(last.cause if last else "unreachable", f"no alternative mirror: {reason}")


def plan_problem(plan: MirrorPlan, graph: NetworkGraph, forecast: Mapping[str, float], *, now: float,
                 policy: PlanningPolicy = DEFAULT_POLICY) -> str | None:
    """Why `plan` can no longer be used as is, or None. The re-plan trigger: call it on graph or
    forecast changes; a non-None answer means re-plan (and `MirrorSession.replan`)."""
    for relay in plan.relays:
        if not graph.node_up(relay):
            return f"relay {relay} is down"
    for link in plan.mirror_links:
        if link in graph.links and not graph.link_up(link):
            return f"mirror link {link} is down"
        if forecast.get(link, 0.0) > policy.congestion_threshold:
            return f"mirror link {link} is predicted to congest (p={forecast[link]:.2f})"
    if plan.graph_version != graph.version:
        standard = standard_path(graph, plan.src, plan.dst, now=now)
        if (standard.links if standard else ()) != plan.standard_links:
            return "the standard path changed"
        for hop in plan.hops:
            segment = _carrier(graph, hop.src, hop.dst, now)
            if segment is None:
                return f"{hop.src} can no longer reach {hop.dst}"
            if segment.links != hop.links:
                return f"routing from {hop.src} to {hop.dst} changed"
    for hop in plan.hops:
        measured = graph.overlay(hop.src, hop.dst, now)
        if measured is not None and measured.loss >= policy.dead_loss:
            return f"overlay edge {hop.src} -> {hop.dst} is losing {measured.loss:.0%}"
    return None


# -- Suurballe: two edge-disjoint paths of least total cost ----------------------------------------

def disjoint_pair(graph: NetworkGraph, src: str, dst: str) -> DisjointPair | None:
    """The cheapest pair of edge-disjoint underlay paths src -> dst (Suurballe), hosts not transiting,
    or None if no two exist. Ignores routing and relays: it says what the underlay could offer."""
    if not (graph.node_up(src) and graph.node_up(dst)) or src == dst:
        return None
    arcs = _arcs(graph, src, dst)
    first_dist, first_parent = _dijkstra(src, arcs, lambda u, v, link, cost: float(cost))
    if dst not in first_dist:
        return None
    first = _walk_back(first_parent, src, dst)  # [(u, v, link, cost)]
    used = {link for _, _, link, _ in first}

    def reduced(u: str, v: str, link: str, cost: int) -> float | None:
        if link in used:
            return None  # the first path's links are only usable backwards, via the residual arcs
        if v not in first_dist:
            return None
        return cost + first_dist[u] - first_dist[v]

    residual = {node: list(out) for node, out in arcs.items()}
    for u, v, link, cost in first:
        residual.setdefault(v, []).append((u, link, -cost))  # cancelling arc, reduced cost 0

    def residual_cost(u: str, v: str, link: str, cost: int) -> float | None:
        if cost < 0:
            return 0.0
        return reduced(u, v, link, cost)

    second_dist, second_parent = _dijkstra(src, residual, residual_cost)
    if dst not in second_dist:
        return None
    second = _walk_back(second_parent, src, dst)
    # Arcs of the second path that run backwards along the first cancel each other.
    cancelled = {link for _, _, link, cost in second if cost < 0}
    out: dict[str, list[tuple[str, str]]] = {}
    for u, v, link, _cost in first + second:
        if link not in cancelled:
            out.setdefault(u, []).append((v, link))
    paths = [_follow(out, src, dst) for _ in range(2)]
    segments = [graph.path_segment(nodes, links) for nodes, links in paths]
    return DisjointPair(segments[0], segments[1])


_Arc = tuple[str, str, int]  # neighbour, link name, cost


def _arcs(graph: NetworkGraph, src: str, dst: str) -> dict[str, list[_Arc]]:
    arcs: dict[str, list[_Arc]] = {}
    for link in graph.links.values():
        if not graph.link_up(link.name):
            continue
        for u, v in ((link.a, link.b), (link.b, link.a)):
            # Hosts never transit: only src leaves a host, and only dst is entered as a host.
            if graph.kind(u) == "host" and u != src:
                continue
            if graph.kind(v) == "host" and v != dst:
                continue
            arcs.setdefault(u, []).append((v, link.name, link.cost))
    return arcs


_ArcWeight = Callable[[str, str, str, int], float | None]


def _dijkstra(src: str, arcs: Mapping[str, list[_Arc]], weight: _ArcWeight) -> tuple[
        dict[str, float], dict[str, tuple[str, str, str, int]]]:
    dist: dict[str, float] = {src: 0.0}
    parent: dict[str, tuple[str, str, str, int]] = {}
    heap: list[tuple[float, str]] = [(0.0, src)]
    done: set[str] = set()
    while heap:
        d, node = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        for neighbour, link, cost in arcs.get(node, ()):
            w = weight(node, neighbour, link, cost)
            if w is None:
                continue
            candidate = d + max(w, 0.0)  # reduced costs are >= 0 up to rounding
            if candidate < dist.get(neighbour, math.inf):
                dist[neighbour] = candidate
                parent[neighbour] = (node, neighbour, link, cost)
                heapq.heappush(heap, (candidate, neighbour))
    return dist, parent


def _walk_back(parent: Mapping[str, tuple[str, str, str, int]], src: str, dst: str) -> list[tuple[str, str, str, int]]:
    path, node = [], dst
    while node != src:
        arc = parent[node]
        path.append(arc)
        node = arc[0]
    return path[::-1]


def _follow(out: dict[str, list[tuple[str, str]]], src: str, dst: str) -> tuple[list[str], list[str]]:
    nodes, links, node = [src], [], src
    while node != dst:
        node, link = out[node].pop()
        nodes.append(node)
        links.append(link)
    return nodes, links

