"""Realise a `LabPlan` on this machine (pyroute2 + nft), change it while it runs, tear it down.

What is created, and nothing else:
- one network namespace per node, named `tm-<lab>-<node>`;
- one veth pair per link, created directly inside the two namespaces (never in the root
  namespace), so removing the namespaces removes the links;
- inside each namespace: addresses, routes, a tbf qdisc on shaped link ends, and an nftables
  table `netdev topomirror_lab` holding the loss rules;
- processes that lab tools start in the lab (recorded in the registry with their start time).

Shaping applies to the egress of each link end, so a link's `bw`/`loss` act on both directions
independently; `set_link(..., direction=...)` changes one end only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pyroute2 import NetNS, netns
from pyroute2.netlink.exceptions import NetlinkError

from topomirror.lab.plan import IfacePlan, LabPlan, compile_lab, lab_prefix
from topomirror.lab.registry import LabRegistry, LinkState, ProcessRecord, process_start_time, terminate
from topomirror.lab.spec import LabSpec, format_rate, parse_queue

NFT_TABLE = "topomirror_lab"
DEFAULT_QUEUE_PACKETS = 100
Progress = Callable[[str], None]


class LabError(RuntimeError):
    """A lab operation that could not be done; the message says what to do."""


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class EndShaping:
    """Egress shaping of one link end."""

    bw: int | None
    loss: float
    queue: str | None


def end_shaping(state: LinkState, iface: IfacePlan) -> EndShaping:
    override = state.ends.get(f"{iface.node}:{iface.name}", {})
    return EndShaping(
        bw=override.get("bw", state.bw),
        loss=override.get("loss", state.loss),
        queue=override.get("queue", state.queue),
    )


def existing_namespaces(prefix: str) -> list[str]:
    return sorted(n for n in netns.listnetns() if n.startswith(prefix))


@contextlib.contextmanager
def _open_namespaces(names: list[str]) -> Iterator[dict[str, NetNS]]:
    handles: dict[str, NetNS] = {}
    try:
        for name in names:
            handles[name] = NetNS(name)
        yield handles
    finally:
        for handle in handles.values():
            handle.close()


def _run_in_namespaces(scripts: dict[str, str], what: str) -> None:
    """Run one shell script per namespace, in parallel; raise naming the first failure."""
    procs = {
        ns: subprocess.Popen(
            ["ip", "netns", "exec", ns, "sh", "-ec", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ns, script in scripts.items()
    }
    failures = []
    for ns, proc in procs.items():
        _, err = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"{ns}: {err.strip()}")
    if failures:
        raise LabError(f"{what} failed in " + "; ".join(failures))


def _nft_script(plan: LabPlan, node: str, registry: LabRegistry) -> str:
    """Loss rules for traffic *arriving* at `node`, set by the sending end's `loss`.

    A link end's loss applies to the packets it sends. They are dropped as they arrive at the
    peer (netdev ingress hook), not in the sender's own stack, because a drop inside the
    sender's stack is reported back to the sending socket (EPERM/ENOBUFS) and real wire loss is
    not: with ingress drops the sender cannot tell, exactly as on a lossy cable.
    """
    chains = []
    for iface in plan.nodes[node].ifaces.values():
        sender = plan.nodes[iface.peer_node].ifaces[iface.peer_iface]
        shaping = end_shaping(registry.links[iface.link], sender)
        if shaping.loss > 0:
            threshold = round(shaping.loss * 100)  # hundredths of a percent
            chains.append(
                f'  chain loss_{iface.name.replace("-", "_").replace(".", "_")} {{\n'
                f'    type filter hook ingress device "{iface.name}" priority 0; policy accept;\n'
                f"    meta protocol {{ ip, ip6 }} numgen random mod 10000 < {threshold} counter drop\n"
                f"  }}\n"
            )
    return (
        f"table netdev {NFT_TABLE} {{}}\n"
        f"delete table netdev {NFT_TABLE}\n"
        f"table netdev {NFT_TABLE} {{\n{''.join(chains)}}}\n"
    )


def _segmentation(plan: LabPlan, registry: LabRegistry, ends: list[IfacePlan]) -> None:
    """UDP segmentation offload per link end: off where the end's packets meet a loss rule.

    Lab links are veths, which carry a UDP GSO super-datagram (a burst a node sent in one call)
    whole, as virtual networks between VMs and containers do. A loss rule sees such a burst as
    one packet, so an end whose packets are subject to loss segments on transmit instead (what
    a physical NIC does): the peer's ingress rule then drops single datagrams.
    """
    from pyroute2.ethtool import Ethtool

    by_namespace: dict[str, list[tuple[str, bool]]] = {}
    for end in ends:
        lossy = end_shaping(registry.links[end.link], end).loss > 0
        by_namespace.setdefault(plan.nodes[end.node].namespace, []).append((end.name, not lossy))
    for namespace, wanted in by_namespace.items():
        netns.pushns(namespace)
        try:
            ethtool = Ethtool()
            try:
                for name, on in wanted:
                    features = ethtool.get_features(name)
                    feature = features.features.get("tx-udp-segmentation")
                    if feature is not None and feature.enable != on:
                        feature.enable = on
                        ethtool.set_features(name, features)
            finally:
                ethtool.close()
        finally:
            netns.popns()


def _apply_qdisc(handle: NetNS, iface: IfacePlan, shaping: EndShaping, *,
                 index: int | None = None, fresh: bool = False) -> None:
    if index is None:
        index = handle.link_lookup(ifname=iface.name)[0]
    if not fresh:
        with contextlib.suppress(NetlinkError):
            handle.tc("del", index=index, handle="1:", parent=0xFFFFFFFF)
    if shaping.bw is None:
        return
    queue = parse_queue(shaping.queue or f"{DEFAULT_QUEUE_PACKETS}p")
    limit = queue.limit_bytes(iface.mtu)
    # Bucket: 5 ms at line rate, never less than two full frames (tbf must fit a packet). A
    # smaller bucket undershoots the rate when the sender is descheduled on a busy host.
    burst = max(2 * (iface.mtu + 14), shaping.bw // 8 // 200)
    handle.tc("add", "tbf", index=index, handle="1:", rate=f"{shaping.bw}bit", burst=burst,
              limit=limit + burst)


def deploy(spec: LabSpec, file: str, *, force: bool = False,
           progress: Progress = _quiet) -> LabRegistry:
    """Create the lab. Refuses if any part of it exists, unless `force` (destroy first)."""
    plan = compile_lab(spec)
    leftovers = existing_namespaces(plan.prefix)
    if LabRegistry.load(spec.name) or leftovers:
        if not force:
            raise LabError(
                f"lab {spec.name!r} is already deployed ({len(leftovers)} namespaces exist). "
                f"Run 'topomirror lab destroy {file}' first, or deploy with --force to redeploy."
            )
        progress("lab exists: destroying it first (--force)")
        destroy(spec, progress=progress)

    registry = LabRegistry(lab=spec.name, file=os.path.abspath(file), deployed_at=time.time())
    for index, link in enumerate(spec.links):
        registry.links[spec.link_name(index)] = LinkState(
            bw=link.bw, loss=link.loss, queue=str(link.queue) if link.queue else None
        )
    registry.namespaces = [n.namespace for n in plan.nodes.values()]
    registry.save()  # before anything exists: a crash from here on is still cleaned up
    try:
        _deploy(plan, registry, progress)
        from topomirror.node.launch import start_lab_nodes

        start_lab_nodes(plan, registry, progress)
    except Exception:
        progress("deploy failed: removing what was created")
        destroy(spec, progress=progress)
        raise
    registry.complete = True
    registry.save()
    return registry


def _deploy(plan: LabPlan, registry: LabRegistry, progress: Progress) -> None:
    progress(f"creating {len(plan.nodes)} namespaces")
    for node in plan.nodes.values():
        netns.create(node.namespace)
    with _open_namespaces(registry.namespaces) as handles:
        progress(f"creating {len(plan.links)} links")
        for link in plan.links:
            ns_a = handles[plan.nodes[link.a.node].namespace]
            ns_b_name = plan.nodes[link.b.node].namespace
            ns_a.link("add", ifname=link.a.name, kind="veth",
                      peer={"ifname": link.b.name, "net_ns_fd": ns_b_name})
        progress("addresses, shaping and routes")
        for node in plan.nodes.values():
            handle = handles[node.namespace]
            index_of = {msg.get("ifname"): msg["index"] for msg in handle.get_links()}
            handle.link("set", index=index_of["lo"], state="up")
            handle.addr("add", index=index_of["lo"], address=str(node.loopback), prefixlen=32)
            for iface in node.ifaces.values():
                index = index_of[iface.name]
                handle.link("set", index=index, mtu=iface.mtu)
                handle.addr("add", index=index, address=str(iface.address.ip),
                            prefixlen=iface.address.network.prefixlen)
                handle.link("set", index=index, state="up")
                shaping = end_shaping(registry.links[iface.link], iface)
                if shaping.bw is not None:
                    _apply_qdisc(handle, iface, shaping, index=index, fresh=True)
            for route in node.routes:
                handle.route("add", dst=str(route.dst), gateway=str(route.gateway),
                             oif=index_of[route.dev])
    progress("forwarding and loss rules")
    lossy = [i for n in plan.nodes.values() for i in n.ifaces.values()
             if end_shaping(registry.links[i.link], i).loss > 0]
    _segmentation(plan, registry, lossy)
    scripts = {}
    for node in plan.nodes.values():
        forward = 1 if plan.spec.nodes[node.name].forwards else 0
        scripts[node.namespace] = (
            f"sysctl -qw net.ipv4.ip_forward={forward} net.ipv4.conf.all.rp_filter=0 "
            f"net.ipv4.conf.default.rp_filter=0 net.ipv4.ping_group_range='0 2147483647'\n"
            f"nft -f - <<'EOF'\n{_nft_script(plan, node.name, registry)}EOF\n"
        )
    _run_in_namespaces(scripts, "sysctl/nftables setup")


def destroy(spec: LabSpec, *, progress: Progress = _quiet) -> dict[str, int]:
    """Remove exactly what this lab's deploy created; safe after a crash or a partial deploy."""
    registry = LabRegistry.load(spec.name)
    prefix = lab_prefix(spec.name)
    namespaces = set(existing_namespaces(prefix))
    if registry:
        namespaces |= {n for n in registry.namespaces if n in netns.listnetns()}
    stopped = 0
    if registry:
        for record in registry.processes:
            stopped += stop_process(record)
    # Anything still running inside a lab namespace was started there by lab tooling or tests
    # and would keep the namespace alive: end it by PID.
    for name in sorted(namespaces):
        for pid in _namespace_pids(name):
            stopped += int(terminate(pid, process_start_time(pid)))
    progress(f"removing {len(namespaces)} namespaces")
    for name in sorted(namespaces):
        with contextlib.suppress(FileNotFoundError, OSError):
            netns.remove(name)
    # The lab's run folder holds only what deploy wrote there (registry, keys, node configs, logs,
    # node state): remove it, so a later deploy of the same lab starts from nothing.
    folder = registry.folder if registry else LabRegistry(spec.name, "").folder
    if folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
    return {"namespaces": len(namespaces), "processes": stopped}


def _namespace_pids(name: str) -> list[int]:
    try:
        return [int(p) for p in netns.ns_pids().get(name, [])]
    except (OSError, AttributeError):
        return []


def stop_process(record: ProcessRecord) -> int:
    return int(terminate(record.pid, record.start_time))


def require_registry(spec: LabSpec, file: str) -> LabRegistry:
    registry = LabRegistry.load(spec.name)
    if registry is None or not registry.complete:
        raise LabError(
            f"lab {spec.name!r} is not deployed. Run 'topomirror lab deploy {file}' first."
        )
    return registry


def register_process(spec: LabSpec, pid: int, namespace: str, argv: list[str],
                     role: str = "") -> ProcessRecord:
    registry = LabRegistry.load(spec.name)
    if registry is None:
        raise LabError(f"lab {spec.name!r} is not deployed")
    start = process_start_time(pid)
    if start is None:
        raise LabError(f"process {pid} ({' '.join(argv)}) exited before it could be recorded")
    record = ProcessRecord(pid, start, namespace, argv, role)
    registry.processes.append(record)
    registry.save()
    return record


def set_link(spec: LabSpec, file: str, link_name: str, *, bw: str | int | None = None,
             loss: float | None = None, queue: str | None = None,
             direction: str | None = None, clear_bw: bool = False) -> LinkState:
    """Change a running link's shaping. `direction` ("node:iface" or node name) limits the
    change to the egress of that end; default is both ends."""
    from topomirror.lab.spec import parse_rate

    registry = require_registry(spec, file)
    plan = compile_lab(spec)
    link = plan.link(link_name)
    state = registry.links[link.name]
    ends = [link.a, link.b]
    if direction:
        ends = [e for e in ends if direction in (e.node, f"{e.node}:{e.name}")]
        if not ends:
            raise LabError(
                f"--direction {direction!r} is not an end of link {link.name!r}: use "
                f"{link.a.node}:{link.a.name} or {link.b.node}:{link.b.name}"
            )
    changes: dict[str, object] = {}
    if bw is not None:
        changes["bw"] = parse_rate(bw)
    if clear_bw:
        changes["bw"] = None
    if loss is not None:
        if not 0 <= loss <= 100:
            raise LabError(f"--loss {loss}: a loss is a percentage between 0 and 100")
        changes["loss"] = float(loss)
    if queue is not None:
        changes["queue"] = str(parse_queue(queue))
    if direction:
        for end in ends:
            state.ends.setdefault(f"{end.node}:{end.name}", {}).update(changes)
    else:
        for key, value in changes.items():
            setattr(state, key, value)
        for end_overrides in state.ends.values():
            for key in changes:
                end_overrides.pop(key, None)
    registry.save()
    for end in ends:
        ns = plan.nodes[end.node].namespace
        with NetNS(ns) as handle:
            _apply_qdisc(handle, end, end_shaping(state, end))
    _segmentation(plan, registry, ends)
    _run_in_namespaces(
        {plan.nodes[e.node].namespace: f"nft -f - <<'EOF'\n{_nft_script(plan, e.node, registry)}EOF\n"
         for e in (link.a, link.b)},
        "updating loss rules",
    )
    return state


def set_link_state(spec: LabSpec, file: str, link_name: str, up: bool) -> None:
    registry = require_registry(spec, file)
    plan = compile_lab(spec)
    link = plan.link(link_name)
    for end in (link.a, link.b):
        with NetNS(plan.nodes[end.node].namespace) as handle:
            index = handle.link_lookup(ifname=end.name)[0]
            handle.link("set", index=index, state="up" if up else "down")
    if up:
        # Routes through the link were flushed when it went down: put them back.
        for end in (link.a, link.b):
            node = plan.nodes[end.node]
            with NetNS(node.namespace) as handle:
                for route in node.routes:
                    if route.dev == end.name:
                        index = handle.link_lookup(ifname=route.dev)[0]
                        try:
                            handle.route("add", dst=str(route.dst), gateway=str(route.gateway),
                                         oif=index)
                        except NetlinkError as exc:
                            if exc.code != errno.EEXIST:
                                raise
    registry.links[link.name].up = up
    registry.save()


def inspect(spec: LabSpec) -> dict[str, object]:
    """Describe the lab as planned and, if deployed, as it is now (live link state, qdiscs)."""
    plan = compile_lab(spec)
    registry = LabRegistry.load(spec.name)
    deployed = registry is not None and registry.complete
    live_ns = set(existing_namespaces(plan.prefix))
    nodes = {}
    for node in plan.nodes.values():
        entry: dict[str, object] = {
            "kind": node.kind,
            "namespace": node.namespace,
            "present": node.namespace in live_ns,
            "loopback": str(node.loopback),
            "interfaces": {
                i.name: {"address": str(i.address), "link": i.link, "peer": f"{i.peer_node}:{i.peer_iface}",
                         "mtu": i.mtu}
                for i in node.ifaces.values()
            },
            "routes": [
                {"dst": str(r.dst), "via": str(r.gateway), "dev": r.dev, "source": r.source}
                for r in node.routes
            ],
        }
        if node.namespace in live_ns:
            with NetNS(node.namespace) as handle:
                ifaces = entry["interfaces"]
                assert isinstance(ifaces, dict)
                for link_msg in handle.get_links():
                    name = link_msg.get("ifname")
                    if name in ifaces:
                        ifaces[name]["state"] = link_msg.get("operstate")
        nodes[node.name] = entry
    links = {}
    for link in plan.links:
        state = registry.links[link.name] if registry else LinkState(
            link.spec.bw, link.spec.loss, str(link.spec.queue) if link.spec.queue else None)
        directions = {}
        for end in (link.a, link.b):
            shaping = end_shaping(state, end)
            directions[f"{end.node}:{end.name} -> {end.peer_node}"] = {
                "bw": format_rate(shaping.bw) if shaping.bw else None,
                "loss_pct": shaping.loss,
                "queue": shaping.queue or (f"{DEFAULT_QUEUE_PACKETS}p" if shaping.bw else None),
            }
        links[link.name] = {
            "endpoints": [f"{link.a.node}:{link.a.name}", f"{link.b.node}:{link.b.name}"],
            "subnet": str(link.a.address.network),
            "up": state.up,
            "mtu": link.spec.mtu,
            "cost": link.spec.cost,
            "egress": directions,
        }
    return {
        "name": spec.name,
        "deployed": deployed,
        "run_dir": str(registry.folder) if registry else None,
        "nodes": nodes,
        "links": links,
        "processes": [
            {"pid": p.pid, "namespace": p.namespace, "role": p.role, "argv": p.argv,
             "alive": process_start_time(p.pid) == p.start_time}
            for p in (registry.processes if registry else [])
        ],
    }
