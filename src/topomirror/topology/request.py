"""The immutable request behind a mirror session: what to protect, between which nodes, why, at what cost."""

from __future__ import annotations

from dataclasses import dataclass

from topomirror.topology.budget import SessionBudget


class RequestError(ValueError):
    """A mirror request that can never be planned as written."""


@dataclass(frozen=True)
class MirrorRequest:
    """`flow_key` is the node's printable flow identity (e.g. "udp 10.0.0.1:5000>10.0.0.2:80"): a
    string so it stores and logs as is. `src` / `dst` are graph node names; `reason` is the decision's
    explanation, kept for `explain`."""

    flow_key: str
    src: str
    dst: str
    traffic_class: str
    reason: str
    budget: SessionBudget
    max_relay_hops: int = 2
    # The standard path is down (silent): duplicate while the relays install, not after their
    # acknowledgements (a copy that reaches a relay before its install is lost; waiting loses all).
    urgent: bool = False

    def __post_init__(self) -> None:
        if not self.flow_key:
            raise RequestError("mirror request: flow_key is empty")
        if self.src == self.dst:
            raise RequestError(f"mirror request for {self.flow_key}: source and destination are both {self.src!r}")
        if self.max_relay_hops < 1:
            raise RequestError(
                f"mirror request for {self.flow_key}: max_relay_hops must be >= 1 (a mirror needs a relay), "
                f"got {self.max_relay_hops}")

    @property
    def required_bps(self) -> float:
        """The mirror path must carry the session's budgeted rate."""
        return self.budget.rate_bps
