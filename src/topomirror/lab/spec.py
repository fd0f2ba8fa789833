"""Lab topology files: parse YAML into a plain, validated `LabSpec` (no side effects).

A lab file describes hosts, routers and relays joined by links, containerlab style:

    name: two-path
    nodes:
      h1: {kind: host}
      r1: {kind: relay}
    links:
      - endpoints: ["h1:eth1", "r1:eth1"]
        bw: 50mbit
        loss: 1.5
        queue: 100p

Validation errors name the file, the line, the node or link and the field (`LabFileError`).
Realising a spec on the system is `topomirror.lab.realize`'s job, not this module's.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
NODE_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
IFACE_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]{0,14}$")

_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 10**6, "mib": 2**20}


class LabFileError(ValueError):
    """A lab file that cannot be used; the message says where and what to change."""


def parse_rate(value: object) -> int:
    """'50mbit' -> 50_000_000 bits/s. Bare integers are bits/s."""
    if isinstance(value, bool):
        raise ValueError("expected a rate such as 50mbit, got a boolean")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("rate must be positive")
        return value
    text = str(value).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    if not match or (match.group(2) or "bit") not in _RATE_UNITS:
        raise ValueError(
            f"invalid rate {value!r}: use a number with bit, kbit, mbit or gbit (e.g. 50mbit)"
        )
    bits = float(match.group(1)) * _RATE_UNITS[match.group(2) or "bit"]
    if bits < 8000:
        raise ValueError(f"rate {value!r} is below 8kbit, too low to shape")
    return int(bits)


def format_rate(bits_per_s: int) -> str:
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits_per_s >= scale and bits_per_s % scale == 0:
            return f"{bits_per_s // scale}{unit}"
    return f"{bits_per_s}bit"


@dataclass(frozen=True)
class QueueSize:
    """A queue limit, in packets or in bytes."""

    packets: int | None = None
    bytes: int | None = None

    def limit_bytes(self, mtu: int) -> int:
        return self.bytes if self.bytes is not None else (self.packets or 0) * (mtu + 14)

    def __str__(self) -> str:
        return f"{self.packets}p" if self.packets is not None else f"{self.bytes}b"


def parse_queue(value: object) -> QueueSize:
    """'100', '100p', '100pkt' -> 100 packets; '64kb', '1500b', '1mib' -> bytes."""
    if isinstance(value, QueueSize):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a queue size such as 100p or 64kb, got a boolean")
    text = str(value).strip().lower()
    match = re.fullmatch(r"(\d+)\s*([a-z]*)", text)
    if not match:
        raise ValueError(f"invalid queue {value!r}: use packets (100p) or bytes (64kb)")
    amount, unit = int(match.group(1)), match.group(2)
    if amount <= 0:
        raise ValueError("queue must be positive")
    if unit in ("", "p", "pkt", "pkts", "packets"):
        return QueueSize(packets=amount)
    if unit in _SIZE_UNITS:
        return QueueSize(bytes=amount * _SIZE_UNITS[unit])
    raise ValueError(f"invalid queue unit {unit!r}: use p (packets) or b, kb, kib, mb, mib")


Rate = Annotated[int, BeforeValidator(parse_rate)]
Queue = Annotated[QueueSize, BeforeValidator(parse_queue)]


class RouteOverride(BaseModel):
    """A static route that replaces the computed one for `dst` on this node."""

    model_config = ConfigDict(extra="forbid")
    dst: str = Field(description="destination prefix (10.0.0.0/24) or a node name (its loopback)")
    via: str = Field(description="a neighbour node name or a next-hop address")


class NodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["host", "router", "relay"] = "host"
    loopback: ipaddress.IPv4Address | None = None
    routes: list[RouteOverride] = Field(default_factory=list)
    # The node daemon's settings (the data plane issue); kept opaque here.
    topomirror: dict[str, Any] | None = None

    @property
    def forwards(self) -> bool:
        return self.kind in ("router", "relay")


class Endpoint(BaseModel):
    model_config = ConfigDict(frozen=True)
    node: str
    iface: str

    def __str__(self) -> str:
        return f"{self.node}:{self.iface}"


def _parse_endpoint(value: object) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    if not isinstance(value, str) or value.count(":") != 1:
        raise ValueError(f"endpoint {value!r} must look like 'node:iface', e.g. 'h1:eth1'")
    node, iface = value.split(":")
    if not NODE_RE.match(node):
        raise ValueError(f"endpoint {value!r}: bad node name {node!r}")
    if not IFACE_RE.match(iface):
        raise ValueError(
            f"endpoint {value!r}: bad interface name {iface!r} (1-15 letters, digits, _ . -)"
        )
    return Endpoint(node=node, iface=iface)


class LinkSpec(BaseModel):
    """A point-to-point link. `bw`, `loss` and `queue` shape the egress of *both* ends."""

    model_config = ConfigDict(extra="forbid")
    endpoints: tuple[
        Annotated[Endpoint, BeforeValidator(_parse_endpoint)],
        Annotated[Endpoint, BeforeValidator(_parse_endpoint)],
    ]
    name: str | None = None
    bw: Rate | None = None
    loss: float = Field(default=0.0, ge=0.0, le=100.0)
    queue: Queue | None = None
    mtu: int = Field(default=1500, ge=576, le=9000)
    cost: int = Field(default=1, ge=1, le=65535)
    addresses: tuple[ipaddress.IPv4Interface, ipaddress.IPv4Interface] | None = None

    @model_validator(mode="after")
    def _no_self_link(self) -> LinkSpec:
        a, b = self.endpoints
        if a.node == b.node:
            raise ValueError(f"self-link {a} -- {b}: both endpoints are on node {a.node!r}")
        if self.addresses is not None:
            na, nb = (x.network for x in self.addresses)
            if na != nb:
                raise ValueError(f"addresses {self.addresses[0]} and {self.addresses[1]} "
                                 "are not in the same subnet")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not NAME_RE.match(value):
            raise ValueError(f"link name {value!r}: use lower-case letters, digits and '-'")
        return value


class LabSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    nodes: dict[str, NodeSpec]
    links: list[LinkSpec]
    subnet: ipaddress.IPv4Network = ipaddress.IPv4Network("10.99.0.0/16")
    loopback_subnet: ipaddress.IPv4Network = ipaddress.IPv4Network("10.255.0.0/16")

    @field_validator("name")
    @classmethod
    def _lab_name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                f"lab name {value!r}: 1-20 chars, lower-case letters, digits and '-', "
                "starting with a letter"
            )
        return value

    @field_validator("nodes")
    @classmethod
    def _node_names(cls, nodes: dict[str, NodeSpec]) -> dict[str, NodeSpec]:
        if not nodes:
            raise ValueError("a lab needs at least one node")
        for name in nodes:
            if not NODE_RE.match(name):
                raise ValueError(
                    f"node name {name!r}: 1-12 lower-case letters and digits, starting with a letter"
                )
        return nodes

    @model_validator(mode="after")
    def _cross_checks(self) -> LabSpec:
        seen_ifaces: dict[Endpoint, int] = {}
        names: set[str] = set()
        for index, link in enumerate(self.links):
            for end in link.endpoints:
                if end.node not in self.nodes:
                    raise _LocatedError(
                        ("links", index, "endpoints"),
                        f"unknown node {end.node!r} in endpoint {end} "
                        f"(known nodes: {', '.join(sorted(self.nodes))})",
                    )
                if end.iface == "lo":
                    raise _LocatedError(("links", index, "endpoints"), "'lo' cannot be a link end")
                if end in seen_ifaces:
                    raise _LocatedError(
                        ("links", index, "endpoints"),
                        f"duplicate interface {end}: already used by link {seen_ifaces[end]}",
                    )
                seen_ifaces[end] = index
            name = self.link_name(index)
            if name in names:
                raise _LocatedError(("links", index, "name"), f"duplicate link name {name!r}")
            names.add(name)
        for node_name, node in self.nodes.items():
            for r_index, route in enumerate(node.routes):
                loc = ("nodes", node_name, "routes", r_index)
                if route.dst not in self.nodes:
                    try:
                        ipaddress.IPv4Network(route.dst, strict=False)
                    except ValueError:
                        raise _LocatedError(
                            (*loc, "dst"), f"{route.dst!r} is neither an IPv4 prefix nor a node name"
                        ) from None
                if route.via not in self.nodes:
                    try:
                        ipaddress.IPv4Address(route.via)
                    except ValueError:
                        raise _LocatedError(
                            (*loc, "via"), f"{route.via!r} is neither an IPv4 address nor a node name"
                        ) from None
                elif route.via not in self.neighbours(node_name):
                    raise _LocatedError(
                        (*loc, "via"), f"node {route.via!r} is not a neighbour of {node_name!r}"
                    )
        return self

    def to_raw(self) -> dict[str, Any]:
        """The spec as lab-file data (parse_lab of its YAML gives an equal spec)."""
        raw = self.model_dump(mode="json", exclude_none=True)
        for link, raw_link in zip(self.links, raw["links"], strict=True):
            raw_link["endpoints"] = [str(e) for e in link.endpoints]
            if link.queue is not None:
                raw_link["queue"] = str(link.queue)
        return raw

    # -- derived, side-effect free views -------------------------------------------------
    def link_name(self, index: int) -> str:
        link = self.links[index]
        if link.name:
            return link.name
        a, b = link.endpoints
        base = f"{a.node}-{b.node}"
        earlier = [
            i for i in range(index)
            if not self.links[i].name and
            {self.links[i].endpoints[0].node, self.links[i].endpoints[1].node} == {a.node, b.node}
        ]
        return base if not earlier else f"{base}-{len(earlier) + 1}"

    def link_index(self, name: str) -> int:
        for index in range(len(self.links)):
            if self.link_name(index) == name:
                return index
        known = ", ".join(self.link_name(i) for i in range(len(self.links)))
        raise LabFileError(f"lab {self.name!r} has no link {name!r} (links: {known})")

    def neighbours(self, node: str) -> set[str]:
        out = set()
        for link in self.links:
            a, b = link.endpoints
            if a.node == node:
                out.add(b.node)
            elif b.node == node:
                out.add(a.node)
        return out


class _LocatedError(ValueError):
    """Raised inside validators to point at a location other than the one being validated."""

    def __init__(self, loc: tuple[Any, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def _yaml_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Follow a pydantic error location through the composed YAML tree to a 1-based line."""
    node, line = root, None
    for key in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            node = node.value[key] if key < len(node.value) else None
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _describe(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    """('links', 2, 'bw') -> "links[2] (h1:eth1 -- r1:eth1).bw"."""
    parts: list[str] = []
    for position, key in enumerate(loc):
        if isinstance(key, int):
            parts[-1] += f"[{key}]"
            if position == 1 and loc[0] == "links":
                try:
                    ends = raw["links"][key].get("name") or " -- ".join(raw["links"][key]["endpoints"])
                    parts[-1] += f" ({ends})"
                except (KeyError, TypeError, AttributeError, IndexError):
                    pass
        elif position == 1 and loc[0] == "nodes":
            parts[-1] += f".{key} (node)"
        elif isinstance(key, str) and not key.startswith(("function-", "tuple[")):
            parts.append(key)
    return ".".join(parts) or "(top level)"


def load_lab(path: str | Path) -> LabSpec:
    """Read and validate a lab file; raise `LabFileError` naming file, line and field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise LabFileError(f"{path}: cannot read lab file: {exc.strerror}") from None
    return parse_lab(text, str(path))


def parse_lab(text: str, source: str = "<lab>") -> LabSpec:
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise LabFileError(f"{source}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise LabFileError(f"{source}: a lab file is a mapping with name, nodes and links")
    # Top-level keys starting with "x-" are extension fields (as in compose files): a place for
    # YAML anchors shared by several nodes. They are not part of the lab.
    raw = {k: v for k, v in raw.items() if not (isinstance(k, str) and k.startswith("x-"))}
    try:
        return LabSpec.model_validate(raw)
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            loc, msg = tuple(error["loc"]), error["msg"]
            ctx_error = (error.get("ctx") or {}).get("error")
            if isinstance(ctx_error, _LocatedError):
                loc, msg = ctx_error.loc, ctx_error.message
            elif msg.startswith(("Value error, ", "Assertion failed, ")):
                msg = msg.split(", ", 1)[1]
            if error["type"] == "missing":
                msg = f"missing required field '{loc[-1]}'"
            elif error["type"] == "extra_forbidden":
                msg = f"unknown field '{loc[-1]}'"
            line = _yaml_line(root, loc)
            where = f"{source}:{line}" if line else source
            messages.append(f"{where}: {_describe(loc, raw)}: {msg}")
        raise LabFileError("\n".join(messages)) from None
