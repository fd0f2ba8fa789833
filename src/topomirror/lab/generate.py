"""Generators for larger lab files (pure: they return the YAML-ready dict)."""

from __future__ import annotations

from typing import Any


def fat_tree(k: int = 4, name: str | None = None, bw: str | None = None) -> dict[str, Any]:
    """A k-ary fat-tree: (k/2)^2 core, k pods of k/2 aggregation + k/2 edge routers,
    k/2 hosts per edge router (k^3/4 hosts)."""
    if k < 2 or k % 2:
        raise ValueError(f"fat-tree k must be an even number >= 2, got {k}")
    half = k // 2
    nodes: dict[str, Any] = {}
    links: list[dict[str, Any]] = []
    ports: dict[str, int] = {}

    def port(node: str) -> str:
        ports[node] = ports.get(node, 0) + 1
        return f"{node}:eth{ports[node]}"

    def link(a: str, b: str) -> None:
        entry: dict[str, Any] = {"endpoints": [port(a), port(b)]}
        if bw:
            entry["bw"] = bw
        links.append(entry)

    for c in range(half * half):
        nodes[f"c{c}"] = {"kind": "router"}
    host = 0
    for pod in range(k):
        for i in range(half):
            nodes[f"a{pod}x{i}"] = {"kind": "router"}
            nodes[f"e{pod}x{i}"] = {"kind": "router"}
        for i in range(half):
            for j in range(half):
                link(f"a{pod}x{i}", f"c{i * half + j}")
            for j in range(half):
                link(f"e{pod}x{i}", f"a{pod}x{j}")
            for _ in range(half):
                nodes[f"h{host}"] = {"kind": "host"}
                link(f"h{host}", f"e{pod}x{i}")
                host += 1
    return {"name": name or f"fat-tree-k{k}", "nodes": nodes, "links": links}


def ring(count: int = 32, name: str | None = None, hosts_every: int = 4) -> dict[str, Any]:
    """`count` nodes: a ring of routers, with a host hanging off every `hosts_every`-th one."""
    routers = count - count // (hosts_every + 1)
    if routers < 3:
        raise ValueError("a ring needs at least 3 routers")
    nodes: dict[str, Any] = {f"r{i}": {"kind": "router"} for i in range(routers)}
    links = [
        {"endpoints": [f"r{i}:eth1", f"r{(i + 1) % routers}:eth2"]} for i in range(routers)
    ]
    for h in range(count - routers):
        nodes[f"h{h}"] = {"kind": "host"}
        links.append({"endpoints": [f"h{h}:eth1", f"r{(h * hosts_every) % routers}:eth{3 + h // routers}"]})
    return {"name": name or f"ring-{count}", "nodes": nodes, "links": links}
