"""New flows at a fixed rate: `python -m topomirror.lab.flowgen send|sink`.

`send` writes one UDP datagram per new 5-tuple, open loop at `--rate` datagrams/s, from a raw
socket so the source port can be anything: flow `i` goes from source port 1024 + i % 64512 to
destination port `--base-port` + (i // 64512) % `--ports`. `--first` starts the numbering further
on, so repeated runs against the same node never reuse a 5-tuple. `sink` binds the destination
ports (the receiver's kernel then answers nothing, not ICMP port unreachable). `send --same-flow`
sends the same datagrams at the same rate on one 5-tuple: the same packet load, no new flows (the
control that separates the cost of deciding new flows from the cost of carrying their packets).
Each prints one JSON line when done.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import time

_UDP = struct.Struct("!HHHH")  # source port, destination port, length, checksum (0: none, IPv4)
SOURCE_PORTS = 64512


def flow_ports(index: int, base_port: int, ports: int) -> tuple[int, int]:
    """The (source, destination) ports of flow number `index`: distinct for 64512 * `ports` flows."""
    return 1024 + index % SOURCE_PORTS, base_port + (index // SOURCE_PORTS) % ports


def send(to: str, rate: int, seconds: float, base_port: int, ports: int, first: int, size: int,
         same_flow: bool = False, burst_ms: float = 2.0) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    payload = b"topomirror-flowgen".ljust(max(0, size), b"\0")
    length = _UDP.size + len(payload)
    count = int(rate * seconds)
    errors = 0
    sent = 0
    stopped: list[int] = []
    # SIGTERM (how the lab ends what it started) stops early and still reports what was sent.
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopped.append(signum))
    start = time.perf_counter()
    burst_s = burst_ms / 1000
    # Open loop: send whatever is due, then sleep `burst_ms` (10 datagrams a burst at 5,000/s), so
    # a slow receiver never slows the offered rate down. The generator shares the cores with the
    # nodes it loads: at 0.5 ms it took 11 % of a core (2,000 wake-ups/s), at 2 ms 6 %.
    while sent < count and not stopped:
        due = min(count, int((time.perf_counter() - start) * rate) + 1)
        while sent < due:
            src, dst = flow_ports(first + (0 if same_flow else sent), base_port, ports)
            try:
                sock.sendto(_UDP.pack(src, dst, length, 0) + payload, (to, 0))
            except OSError:
                errors += 1
            sent += 1
        time.sleep(burst_s)
    elapsed = time.perf_counter() - start
    return {"sent": sent, "errors": errors, "seconds": round(elapsed, 3),
            "rate": round(sent / elapsed, 1) if elapsed else 0.0}


def sink(base_port: int, ports: int, seconds: float) -> dict[str, object]:
    # Bound but never read: the kernel answers no ICMP port unreachable, and this process costs no
    # CPU on a machine the nodes under test share.
    socks = []
    for port in range(base_port, base_port + ports):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("0.0.0.0", port))
        socks.append(sock)
    stopped: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopped.append(signum))
    print(json.dumps({"listening": ports}), flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stopped:
        time.sleep(0.05)
    return {"ports": ports}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m topomirror.lab.flowgen")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--rate", type=int, default=5000, help="new flows per second")
    s.add_argument("--seconds", type=float, default=5.0, help="at most this long (SIGTERM ends it earlier)")
    s.add_argument("--first", type=int, default=0, help="number of the first flow")
    s.add_argument("--size", type=int, default=32, help="payload bytes")
    s.add_argument("--same-flow", action="store_true", help="every datagram on one 5-tuple (no new flows)")
    s.add_argument("--burst-ms", type=float, default=2.0, help="sleep between bursts of what is due")
    r = sub.add_parser("sink")
    r.add_argument("--seconds", type=float, default=30.0)
    for p in (s, r):
        p.add_argument("--base-port", type=int, default=20000)
        p.add_argument("--ports", type=int, default=16)
    args = parser.parse_args(argv)
    if args.command == "send":
        report = send(args.to, args.rate, args.seconds, args.base_port, args.ports, args.first, args.size,
                      args.same_flow, args.burst_ms)
    else:
        report = sink(args.base_port, args.ports, args.seconds)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
