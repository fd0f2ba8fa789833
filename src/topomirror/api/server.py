"""The node's local HTTP API (aiohttp): /status, /flows, /paths, /sessions, /metrics.

It listens on localhost by default (a token is required for anything else) and, when the node
has a state folder, also on a Unix socket `api.sock` there, which tools outside the node's
network namespace (the lab, tests) can reach.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from topomirror.node.daemon import Node


class _NodeCollector:
    """Reads the engine's counters at scrape time: nothing is added to the packet path."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self):  # type: ignore[no-untyped-def]
        self.node.fold_counts()
        engine = self.node.engine
        counters = CounterMetricFamily("topomirror_packets", "Data-plane packet counters", labels=["counter"])
        for name, value in engine.counters.items():
            counters.add_metric([name], value)
        yield counters
        drops = CounterMetricFamily("topomirror_drops", "Dropped datagrams by reason", labels=["reason"])
        for reason, value in engine.drops.items():
            drops.add_metric([reason], value)
        yield drops
        flows = GaugeMetricFamily("topomirror_flows", "Flows in the flow table")
        flows.add_metric([], len(self.node.flows))
        yield flows
        # Flow ids are assigned once per new flow: the rate of new-flow decisions (`bench flows`).
        created = CounterMetricFamily("topomirror_flows_created", "New flows decided (flow ids assigned)")
        created.add_metric([], self.node._flow_ids)
        yield created
        wins = CounterMetricFamily("topomirror_path_packets", "Packets received per sender and path",
                                   labels=["sender", "path", "outcome"])
        owd = GaugeMetricFamily("topomirror_path_owd_us", "Relative one-way delay of the last packet",
                                labels=["sender", "path"])
        for peer in engine.peers.values():
            for meter in (peer.meters.meters.values() if peer.meters else []):
                wins.add_metric([peer.name, str(meter.path_id), "won"], meter.total_wins)
                wins.add_metric([peer.name, str(meter.path_id), "lost_race"],
                                meter.total_packets - meter.total_wins)
                owd.add_metric([peer.name, str(meter.path_id)], meter.owd_now_us)
        yield wins
        yield owd


def build_app(node: Node) -> web.Application:
    token = node.config.api.token
    registry = CollectorRegistry()
    registry.register(_NodeCollector(node))  # type: ignore[arg-type]

    @web.middleware
    async def auth(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if token and request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        return await handler(request)

    async def status(_: web.Request) -> web.Response:
        return web.json_response(node.status())

    def _bounded(request: web.Request, name: str, default: int, high: int) -> int:
        try:
            return max(1, min(int(request.query.get(name, str(default))), high))
        except ValueError:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"{name} must be an integer"}),
                                     content_type="application/json") from None

    async def flows(request: web.Request) -> web.Response:
        return web.json_response(node.flows_view(_bounded(request, "limit", 1000, 1_000_000)))

    async def paths(request: web.Request) -> web.Response:
        return web.json_response(node.paths_view(_bounded(request, "last", 50, 10_000)))

    async def sessions(_: web.Request) -> web.Response:
        return web.json_response(node.sessions_view())

    async def explain(request: web.Request) -> web.Response:
        subject = request.query.get("subject", "")
        if not subject:
            return web.json_response({"error": "give ?subject=FLOW-or-session:ID"}, status=400)
        return web.json_response(node.explain(subject))

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app = web.Application(middlewares=[auth])
    app.add_routes([web.get("/status", status), web.get("/flows", flows), web.get("/paths", paths),
                    web.get("/sessions", sessions), web.get("/metrics", metrics),
                    web.get("/explain", explain)])
    return app


async def start_api(node: Node) -> web.AppRunner:
    runner = web.AppRunner(build_app(node), access_log=None)
    await runner.setup()
    api = node.config.api
    await web.TCPSite(runner, str(api.address), api.port).start()
    if node.config.state_dir is not None:
        sock = node.config.state_dir / "api.sock"
        sock.unlink(missing_ok=True)
        await web.UnixSite(runner, str(sock)).start()
    return runner
