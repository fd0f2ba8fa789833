"""Read a node's API (TCP URL or Unix socket) and render it for people."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


class ApiError(RuntimeError):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def fetch(path: str, *, url: str | None = None, socket_path: Path | None = None, token: str | None = None,
          timeout: float = 5.0) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if socket_path is not None:
        conn: http.client.HTTPConnection = _UnixConnection(str(socket_path), timeout)
        where = str(socket_path)
    else:
        base = (url or "http://127.0.0.1:7781").removeprefix("http://").rstrip("/")
        host, _, port = base.partition(":")
        conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
        where = f"http://{base}"
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
    except OSError as exc:
        raise ApiError(f"cannot reach the node API at {where}: {exc}. Is the node running "
                       "('topomirror node run --config FILE')?") from None
    finally:
        conn.close()
    if response.status != 200:
        raise ApiError(f"{where}{path}: HTTP {response.status}: {body[:200].decode(errors='replace')}")
    if path == "/metrics":
        return body.decode()
    return json.loads(body)


def status_lines(data: dict[str, Any]) -> list[str]:
    """Who carries the packets and how well the sends batch, in words, from a /status answer."""
    lines = []
    thread = data.get("packet_thread")
    if thread:
        wakeups = thread["rx_wakeups"] + thread["tx_wakeups"]
        per = (f", per wake-up {thread['gil_wait_us'] / wakeups:.1f} us waiting for the GIL and "
               f"{thread['gil_held_us'] / wakeups:.1f} us holding it" if wakeups and "gil_held_us" in thread else "")
        state = "running" if thread["alive"] else "stopped"
        lines.append(f"packet thread {state}{' (auto)' if thread.get('auto') else ''}: {wakeups} wake-ups{per}, "
                     f"{thread.get('handoffs', 0)} hand-offs to the event loop"
                     + ("; the event loop has the packets now" if thread.get("event_loop_has_packets") else ""))
    else:
        lines.append("packets: carried by the event loop (no packet thread)")
    io = data.get("io") or {}
    if io.get("send_messages"):
        lines.append(f"sends: {io['datagrams_sent']} datagrams in {io['send_messages']} trips through the kernel "
                     f"({io['datagrams_sent'] / io['send_messages']:.1f} per trip)")
    return lines


def render(view: str, data: Any, out: Console) -> None:
    if view == "status":
        out.print(f"node [bold]{data['node']}[/] id {data['node_id']} epoch {data['epoch']} "
                  f"up {data['uptime_s']}s, tun mtu {data['tun_mtu']}, {data['flows']} flows, "
                  f"{data['relay_vcs']} relay VCs")
        for line in status_lines(data):
            out.print(line, highlight=False)
        table = Table("counter", "value", title="counters")
        for key, value in {**data["counters"], **{f"drop:{k}": v for k, v in data["drops"].items()}}.items():
            table.add_row(key, str(value))
        out.print(table)
    elif view == "flows":
        # "sent by": the native loop (C) carries a flow once nothing per packet is left to decide.
        table = Table("flow", "peer", "mirror", "active", "packets", "bytes", "sent by", "reason", title="flows")
        for f in data:
            table.add_row(f["flow"], str(f["peer"]), str(f["mirror"] or "-"), "yes" if f["mirror_active"] else "",
                          str(f["packets"]), str(f["bytes"]), "C" if f.get("native") else "Python", f["reason"])
        out.print(table)
    elif view == "paths":
        table = Table("peer", "path", "via", "active", "sent", "reported owd avg us", "loss", "wins", title="paths")
        for peer, info in data.items():
            for route in info["routes"]:
                reports = info["feedback"].get(str(route["path_id"])) or []
                last = reports[-1] if reports else None
                table.add_row(peer, str(route["path_id"]), ",".join(route["via"]) or "direct",
                              "yes" if route["active"] else "no", str(route["packets"]),
                              str(last["owd_avg_us"]) if last else "-",
                              str(last["lost"]) if last else "-", str(last["wins"]) if last else "-")
        out.print(table)
    elif view == "explain":
        if not data:
            out.print("no stored decision matches (is the node running with a state folder?)")
        for entry in data:
            at = entry["at"]
            stamp = ("now (live flow, no stored decision)" if at is None
                     else time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}")
            out.print(f"{stamp} [bold]{entry['subject']}[/] {entry['kind']}: {entry['reason']}", highlight=False)
    elif view == "sessions":
        table = Table("session", "flow", "peer", "state", "relays", "lease s", "reason",
                      title=f"mirror sessions (policy {data.get('policy')})")
        for sess in data.get("mirror_sessions", []):
            table.add_row(str(sess["session_id"]), sess["flow"], sess["peer"], sess["state"],
                          ",".join(sess["relays"]), str(sess["lease_left_s"]), sess["reason"])
        out.print(table)
        dup = data.get("duplication", {})
        out.print(f"duplication: {dup.get('bytes_extra', 0)} extra bytes of {dup.get('bytes_original', 0)} "
                  f"({100 * dup.get('extra_share', 0):.1f} %, budget {100 * dup.get('budget_share', 0):.0f} %)")
        if data.get("relay_vcs"):
            vcs = Table("sender", "channel", "next hop", "lease s", "packets", title="virtual connections (relay)")
            for vc in data["relay_vcs"]:
                vcs.add_row(str(vc["sender"]), str(vc["channel"]), vc["next_hop"], str(vc["lease_left_s"]),
                            str(vc["packets"]))
            out.print(vcs)
    else:
        out.print_json(json.dumps(data))
