"""Topology builder (pure): the network graph, mirror path planning, mirror sessions, budgets.

No sockets and no clocks: `now` is always an argument. The node glues these to the data plane.
"""

from topomirror.topology.budget import (
    DuplicationBudget,
    DuplicationBudgetConfig,
    SessionBudget,
    TokenBucket,
    admit_copy,
)
from topomirror.topology.graph import GraphError, NetworkGraph, OverlayMetrics, Segment, UnderlayLink, overlay_link
from topomirror.topology.paths import (
    DisjointPair,
    MirrorPlan,
    NoPlan,
    PlanningPolicy,
    disjoint_pair,
    plan_mirror,
    plan_problem,
    plan_reroute,
    standard_path,
)
from topomirror.topology.request import MirrorRequest, RequestError
from topomirror.topology.session import (
    Action,
    AdaptationPolicy,
    ChannelAllocator,
    IllegalTransition,
    InstallVC,
    Lease,
    MirrorSession,
    RemoveVC,
    RenewVC,
    SessionFeedback,
    SessionPolicy,
    SessionState,
    StartDuplication,
    StopDuplication,
    Transition,
    Verdict,
)

__all__ = [
    "Action", "AdaptationPolicy", "ChannelAllocator", "DisjointPair", "DuplicationBudget", "DuplicationBudgetConfig",
    "GraphError", "IllegalTransition", "InstallVC", "Lease", "MirrorPlan", "MirrorRequest", "MirrorSession",
    "NetworkGraph", "NoPlan", "OverlayMetrics", "PlanningPolicy", "RemoveVC", "RenewVC", "RequestError", "Segment",
    "SessionBudget", "SessionFeedback", "SessionPolicy", "SessionState", "StartDuplication", "StopDuplication",
    "TokenBucket", "Transition", "UnderlayLink", "Verdict", "admit_copy", "disjoint_pair", "overlay_link",
    "plan_mirror", "plan_problem", "plan_reroute", "standard_path",
]
