"""The node daemon's configuration: typed, with defaults, validated on load.

Example (YAML):

    node_id: 1
    name: h1
    listen: {address: 0.0.0.0, port: 4789}
    underlay: [10.255.0.1]
    overlay: {address: 172.16.1.1/24, tun: tmtun0, underlay_mtu: 1500}
    api: {address: 127.0.0.1, port: 7781}
    peers:
      - {id: 2, name: h2, underlay: [10.255.0.2], prefixes: [172.16.2.0/24], key_file: h1-h2.key}
      - {id: 3, name: r1, underlay: [10.255.0.3], relay: true, key_file: h1-r1.key}
    targets:
      via-r1: {peer: h2, relays: [r1]}
    filters:
      - {number: 100, protocol: udp, dst_ports: [9400], target: via-r1}
      - {number: 200, protocol: icmp, target: via-r1}
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from topomirror.wire.crypto import KeyError_, decode_key, load_key_file

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17}


class ConfigError(ValueError):
    """A node configuration that cannot be used; the message names the file and the key."""


class Listen(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: ipaddress.IPv4Address = ipaddress.IPv4Address("0.0.0.0")
    port: int = Field(default=4789, ge=1, le=65535)
    gso: bool = Field(default=True, description="send bursts with UDP segmentation offload (one call per burst)")
    gro: bool = Field(default=True, description="receive coalesced bursts (UDP_GRO) where the kernel offers them")
    packet_thread: Literal["auto", "on", "off"] = Field(default="auto", description=(
        "the native packet loops on a thread of their own, which sends, delivers or forwards a packet "
        "the moment it arrives instead of waking the event loop: lower latency, but at high rates "
        "smaller batches and more wake-ups (docs/BENCHMARKS.md); auto: the thread while the node "
        "carries under 25,000 packets/s, the event loop above; needs the native data plane"))


class Overlay(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: ipaddress.IPv4Interface
    tun: str = Field(default="tmtun0", pattern=r"^[a-zA-Z][a-zA-Z0-9_.-]{0,14}$")
    underlay_mtu: int = Field(default=1500, ge=576, le=9000,
                              description="MTU of the underlay path; the TUN MTU is derived from it")


class Api(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: ipaddress.IPv4Address = ipaddress.IPv4Address("127.0.0.1")
    port: int = Field(default=7781, ge=1, le=65535)
    token: str | None = None

    @model_validator(mode="after")
    def _token_off_localhost(self) -> Api:
        if not self.address.is_loopback and not self.token:
            raise ValueError(f"the API binds to {self.address}, beyond localhost: set api.token")
        return self


class Peer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int = Field(ge=1, le=65535)
    name: str
    underlay: list[ipaddress.IPv4Address] = Field(min_length=1)
    port: int = Field(default=4789, ge=1, le=65535)
    prefixes: list[ipaddress.IPv4Network] = Field(default_factory=list)
    relay: bool = False
    key: str | None = Field(default=None, description="base64 pair key (prefer key_file)")
    key_file: Path | None = None

    @model_validator(mode="after")
    def _one_key(self) -> Peer:
        if (self.key is None) == (self.key_file is None):
            raise ValueError(f"peer {self.name!r}: give exactly one of key or key_file")
        return self


class Target(BaseModel):
    """Where a mirrored flow's copy goes: a peer, reached through a list of relays."""

    model_config = ConfigDict(extra="forbid")
    peer: str
    relays: list[str] = Field(min_length=1)


class Filter(BaseModel):
    """An AWS-style numbered rule: lowest number that matches wins."""

    model_config = ConfigDict(extra="forbid")
    number: int = Field(ge=1, le=32766)
    action: Literal["mirror", "accept"] = "mirror"
    protocol: Literal["icmp", "tcp", "udp", "any"] = "any"
    src_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("0.0.0.0/0")
    dst_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("0.0.0.0/0")
    src_ports: list[int] = Field(default_factory=list)
    dst_ports: list[int] = Field(default_factory=list)
    dscp: int | None = Field(default=None, ge=0, le=63)
    target: str | None = None

    @model_validator(mode="after")
    def _target_for_mirror(self) -> Filter:
        if self.action == "mirror" and not self.target:
            raise ValueError(f"filter {self.number}: a mirror rule needs a target")
        return self


class Timers(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feedback_ms: int = Field(default=100, ge=10)
    probe_ms: int = Field(default=200, ge=10, description="probe a path idle for this long")
    lease_ms: int = Field(default=6000, ge=500, description="virtual-connection lease on relays")
    dedup_window: int = Field(default=16384, description="de-dup window, packets (power of 2)")
    dedup_skew_ms: int = Field(default=250, ge=1, description="de-dup window, path skew")
    flow_idle_s: float = Field(default=30.0, gt=0, description="forget a flow idle this long")
    short_flow_idle_s: float = Field(default=5.0, gt=0,
                                     description="forget a flow of one or two packets idle this long")


class Adaptive(BaseModel):
    """The adaptive brain (`topomirror.node.controller`): which policy, and what it knows."""

    model_config = ConfigDict(extra="forbid")
    policy: Literal["static", "off", "always", "reactive", "predictive"] = "static"
    inventory: Path | None = Field(default=None, description="underlay description: a lab file")
    classes: list[dict[str, object]] = Field(
        default_factory=list, description="flow class rules (topomirror.analysis.classify.ClassRule)")
    probability_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    degraded_delay_us: float = Field(default=2000.0, gt=0)
    horizon_ms: float = Field(default=100.0, gt=0)
    duplication_share: float = Field(default=0.10, ge=0.0, lt=1.0,
                                     description="copies at most this share of all bytes sent (copies included)")
    session_rate_mbit: float = Field(default=50.0, gt=0)
    protect_hold_s: float = Field(
        default=3.0, gt=0, le=600,
        description="keep a mirror session this long after its standard path recovered and the mirror "
                    "stopped winning (hysteresis before teardown)")
    both_directions: bool = Field(
        default=True,
        description="predictive: a node mirroring one direction of a connection asks the peer to mirror "
                    "the other (CONTROL protect); off, each node protects only what it sends")


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node_id: int = Field(ge=1, le=65535)
    name: str
    listen: Listen = Listen()
    underlay: list[ipaddress.IPv4Address] = Field(default_factory=list)
    overlay: Overlay | None = None
    api: Api = Api()
    peers: list[Peer] = Field(default_factory=list)
    targets: dict[str, Target] = Field(default_factory=dict)
    filters: list[Filter] = Field(default_factory=list)
    timers: Timers = Timers()
    adaptive: Adaptive = Adaptive()
    state_dir: Path | None = Field(default=None, description="epoch counter and database")

    @model_validator(mode="after")
    def _references(self) -> NodeConfig:
        names = {p.name for p in self.peers}
        ids = [p.id for p in self.peers]
        if len(ids) != len(set(ids)) or self.node_id in ids:
            raise ValueError("peer ids must be unique and differ from node_id")
        for name, target in self.targets.items():
            if target.peer not in names:
                raise ValueError(f"target {name!r}: unknown peer {target.peer!r}")
            for relay in target.relays:
                if relay not in names:
                    raise ValueError(f"target {name!r}: unknown relay {relay!r} (list it under peers)")
        numbers = [f.number for f in self.filters]
        if len(numbers) != len(set(numbers)):
            raise ValueError("filter numbers must be unique")
        for rule in self.filters:
            if rule.target and rule.target not in self.targets:
                raise ValueError(f"filter {rule.number}: unknown target {rule.target!r}")
        return self

    def peer(self, name: str) -> Peer:
        return next(p for p in self.peers if p.name == name)


def load_config(path: str | Path) -> NodeConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a node config is a mapping (node_id, name, peers, ...)")
    try:
        config = NodeConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "(top level)"
            msg = error["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: {where}: {msg}")
        raise ConfigError("\n".join(lines)) from None
    if config.adaptive.inventory is not None and not config.adaptive.inventory.is_absolute():
        config.adaptive.inventory = path.parent / config.adaptive.inventory
    # Resolve relative key files against the config's folder.
    for peer in config.peers:
        if peer.key_file is not None and not peer.key_file.is_absolute():
            peer.key_file = path.parent / peer.key_file
    return config


def peer_key(peer: Peer) -> bytes:
    try:
        if peer.key is not None:
            return decode_key(peer.key, f"peer {peer.name} key")
        assert peer.key_file is not None
        return load_key_file(peer.key_file)
    except KeyError_ as exc:
        raise ConfigError(str(exc)) from None
