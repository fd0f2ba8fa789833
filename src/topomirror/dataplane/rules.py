"""Static mirror rules: AWS-style numbered `Filter`s mapping flows to a mirror `Target`.

This is the default decision hook; the analysis engine replaces it with a learned one. A hook
is called once per new flow, off nothing but the flow's first packet, and must be cheap.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from topomirror.dataplane.packet import FlowKey
from topomirror.node.config import PROTOCOLS, Filter


@dataclass(frozen=True, slots=True)
class FlowDecision:
    target: str | None  # mirror target name, None = standard path only
    reason: str
    rule: int | None = None


DecisionHook = Callable[[FlowKey, bytes], FlowDecision]


def _matches(rule: Filter, key: FlowKey) -> bool:
    if rule.protocol != "any" and PROTOCOLS[rule.protocol] != key.proto:
        return False
    if rule.dscp is not None and rule.dscp != key.dscp:
        return False
    if rule.src_ports and key.sport not in rule.src_ports:
        return False
    if rule.dst_ports and key.dport not in rule.dst_ports:
        return False
    if ipaddress.IPv4Address(key.src) not in rule.src_cidr:
        return False
    return ipaddress.IPv4Address(key.dst) in rule.dst_cidr


def static_hook(filters: list[Filter]) -> DecisionHook:
    ordered = sorted(filters, key=lambda f: f.number)

    def decide(key: FlowKey, first_packet: bytes) -> FlowDecision:
        for rule in ordered:
            if _matches(rule, key):
                if rule.action == "mirror":
                    return FlowDecision(rule.target, f"filter {rule.number} mirrors to {rule.target}",
                                        rule.number)
                return FlowDecision(None, f"filter {rule.number} accepts (no mirror)", rule.number)
        return FlowDecision(None, "no filter matches")

    return decide
