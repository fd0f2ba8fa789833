"""Run node daemons inside a lab: generate keys and configs, start them, record their PIDs.

A lab node opts in with a `topomirror:` block:

    h1:
      kind: host
      topomirror:
        overlay: 172.16.1.1/24          # the host's VM prefix, routed into its TUN
        targets: {via-r1: {peer: h2, relays: [r1]}}
        filters: [{number: 100, protocol: udp, dst_ports: [9400], target: via-r1}]
    r1: {kind: relay, topomirror: {}}

Every pair of topomirror nodes gets its own key; each node's peers are all the other topomirror
nodes, reached at their loopback address. Files go to the lab's run folder:
`nodes/<node>/config.yaml`, `nodes/<node>/node.log`, `keys/<a>-<b>.key`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from topomirror.lab.plan import LabPlan
from topomirror.lab.registry import LabRegistry, ProcessRecord, process_start_time
from topomirror.lab.spec import LabSpec
from topomirror.wire.crypto import generate_key

Progress = Callable[[str], None]


class LaunchError(RuntimeError):
    pass


class LabNodeSettings(BaseModel):
    """The `topomirror:` block of a lab node."""

    model_config = ConfigDict(extra="forbid")
    overlay: ipaddress.IPv4Interface | None = None
    port: int = Field(default=4789, ge=1, le=65535)
    api_port: int = Field(default=7781, ge=1, le=65535)
    targets: dict[str, Any] = Field(default_factory=dict)
    filters: list[dict[str, Any]] = Field(default_factory=list)
    timers: dict[str, Any] = Field(default_factory=dict)
    adaptive: dict[str, Any] = Field(default_factory=dict)


def overlay_address(spec: LabSpec, node: str) -> str:
    """The overlay address of a lab host's node (its TUN address), e.g. "172.16.3.1"."""
    block = spec.nodes[node].topomirror or {}
    if "overlay" not in block:
        raise LaunchError(f"node {node!r} of lab {spec.name!r} has no topomirror overlay")
    return str(block["overlay"]).split("/")[0]


def with_host_settings(spec: LabSpec, name: str, *, adaptive: dict[str, Any] | None = None,
                       timers: dict[str, Any] | None = None) -> LabSpec:
    """A copy of `spec` named `name` whose overlay hosts get these adaptive/timer settings on top
    of their own (how the demo runs one lab under each policy, and the recorder measures it)."""
    nodes = {}
    for node_name, node in spec.nodes.items():
        block = dict(node.topomirror) if node.topomirror is not None else None
        if block is not None and "overlay" in block:
            if adaptive:
                block["adaptive"] = {**dict(block.get("adaptive") or {}), **adaptive}
            if timers:
                block["timers"] = {**dict(block.get("timers") or {}), **timers}
        nodes[node_name] = node.model_copy(update={"topomirror": block})
    return spec.model_copy(update={"name": name, "nodes": nodes})


def node_dir(registry: LabRegistry, node: str) -> Path:
    return registry.folder / "nodes" / node


def api_socket(registry: LabRegistry, node: str) -> Path:
    return node_dir(registry, node) / "api.sock"


def lab_node_settings(plan: LabPlan) -> dict[str, LabNodeSettings]:
    out = {}
    for name, node in plan.spec.nodes.items():
        if node.topomirror is None:
            continue
        try:
            out[name] = LabNodeSettings.model_validate(node.topomirror)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise LaunchError(f"node {name!r}: topomirror.{where}: {first['msg']}") from None
    return out


def generate_configs(plan: LabPlan, registry: LabRegistry) -> dict[str, Path]:
    """Write keys and one config per topomirror node; return config paths by node."""
    settings = lab_node_settings(plan)
    names = list(settings)
    ids = {name: index for index, name in enumerate(names, start=1)}
    inventory = registry.folder / "lab.yaml"
    inventory.write_text(yaml.safe_dump(plan.spec.to_raw(), sort_keys=False))
    keys_dir = registry.folder / "keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    key_files: dict[frozenset[str], Path] = {}
    for a, b in itertools.combinations(sorted(names), 2):
        path = keys_dir / f"{a}-{b}.key"
        path.write_text(generate_key() + "\n")
        path.chmod(0o600)
        key_files[frozenset((a, b))] = path
    configs = {}
    for name in names:
        mine = settings[name]
        folder = node_dir(registry, name)
        folder.mkdir(parents=True, exist_ok=True)
        peers = []
        for other in names:
            if other == name:
                continue
            theirs = settings[other]
            peers.append({
                "id": ids[other], "name": other, "underlay": [str(plan.address_of(other))],
                "port": theirs.port, "relay": plan.spec.nodes[other].kind == "relay",
                "prefixes": [str(theirs.overlay.network)] if theirs.overlay else [],
                "key_file": str(key_files[frozenset((name, other))]),
            })
        config: dict[str, Any] = {
            "node_id": ids[name], "name": name,
            "listen": {"address": "0.0.0.0", "port": mine.port},
            "underlay": [str(plan.address_of(name))],
            "api": {"address": "127.0.0.1", "port": mine.api_port},
            "peers": peers, "targets": mine.targets, "filters": mine.filters,
            "timers": mine.timers, "state_dir": str(folder),
        }
        if mine.adaptive:
            config["adaptive"] = {"inventory": str(inventory), **mine.adaptive}
        if mine.overlay is not None:
            config["overlay"] = {"address": str(mine.overlay), "tun": "tmtun0"}
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        configs[name] = path
    return configs


def start_lab_nodes(plan: LabPlan, registry: LabRegistry, progress: Progress = lambda _: None,
                    timeout: float = 20.0) -> list[str]:
    """Start one daemon per topomirror node, wait until each is ready; return their names."""
    from topomirror.node.config import load_config

    configs = generate_configs(plan, registry)
    if not configs:
        return []
    for path in configs.values():
        load_config(path)  # fail here, with the config's own message, not in a daemon log
    progress(f"starting {len(configs)} node daemons")
    return _start(plan, registry, configs, timeout)


def stop_lab_node(registry: LabRegistry, name: str) -> int:
    """Stop one lab node daemon by its recorded PID (SIGTERM, then SIGKILL); returns how many stopped."""
    from topomirror.lab.realize import stop_process

    stopped = 0
    for record in [p for p in registry.processes if p.role == f"node:{name}"]:
        stopped += stop_process(record)
        registry.processes.remove(record)
    registry.save()
    return stopped


def restart_lab_node(plan: LabPlan, registry: LabRegistry, name: str, timeout: float = 20.0, *,
                     warm: bool = True) -> None:
    """Start a lab node daemon again with the same config and state folder.

    `warm` (the default): the new daemon loads while the old one still runs, then stops it and
    takes over (`node run --replace`), so the outage is a shutdown and a set-up, not the imports.
    Otherwise the old one is stopped first, as after a crash."""
    config = node_dir(registry, name) / "config.yaml"
    if not config.exists():
        raise LaunchError(f"node {name!r} runs no topomirror daemon in lab {plan.spec.name!r}")
    running = [p for p in registry.processes
               if p.role == f"node:{name}" and process_start_time(p.pid) == p.start_time]
    if not warm or len(running) != 1:
        stop_lab_node(registry, name)
        _start(plan, registry, {name: config}, timeout)
        return
    old = running[0]
    try:
        _start(plan, registry, {name: config}, timeout, replace=old.pid)
    finally:
        if process_start_time(old.pid) != old.start_time:  # gone: the new daemon stopped it
            registry.processes.remove(old)
            registry.save()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(old.pid, os.WNOHANG)  # (ours to reap when this process started it)


def _start(plan: LabPlan, registry: LabRegistry, configs: dict[str, Path], timeout: float,
           replace: int | None = None) -> list[str]:
    started: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name, path in configs.items():
        folder = path.parent
        ready = folder / "ready"
        ready.unlink(missing_ok=True)
        argv = ["ip", "netns", "exec", plan.namespace(name), sys.executable, "-m", "topomirror.cli.main",
                "node", "run", "--config", str(path), "--ready-file", str(ready)]
        if replace is not None:
            argv += ["--replace", str(replace)]
        with open(folder / "node.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        start = process_start_time(proc.pid) or 0
        registry.processes.append(ProcessRecord(proc.pid, start, plan.namespace(name), argv[4:], f"node:{name}"))
        registry.save()
        started[name] = (proc, ready)
    deadline = time.monotonic() + timeout
    waiting = dict(started)
    while waiting and time.monotonic() < deadline:
        for name, (proc, ready) in list(waiting.items()):
            if ready.exists():
                del waiting[name]
            elif proc.poll() is not None:
                log_tail = (ready.parent / "node.log").read_text()[-1500:]
                raise LaunchError(f"node daemon {name} exited with code {proc.returncode}:\n{log_tail}")
        time.sleep(0.05)
    if waiting:
        raise LaunchError(f"node daemons not ready after {timeout}s: {', '.join(waiting)} "
                          f"(logs in {registry.folder / 'nodes'})")
    return list(started)
