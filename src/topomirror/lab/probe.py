"""Numbered UDP probes for loss measurement: `python -m topomirror.lab.probe send|recv`.

Each datagram carries an 8-byte sequence number and an 8-byte send time (ns); the receiver
counts distinct sequence numbers and duplicates and prints one JSON line when it has been idle
for `--idle` seconds after the first datagram (or after `--max-seconds`).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

_HEADER = struct.Struct("!QQ")


def send(to: str, port: int, count: int, rate: int, size: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    padding = b"\0" * max(0, size - _HEADER.size)
    start = time.perf_counter()
    seq = 0
    # Send whatever is due, then sleep a little: paced to the rate on average, in bursts of at
    # most ~1 ms worth, without spinning a core (the nodes under test need the CPU).
    while seq < count:
        due = min(count, int((time.perf_counter() - start) * rate) + 1)
        while seq < due:
            try:
                sock.sendto(_HEADER.pack(seq, time.time_ns()) + padding, (to, port))
            except OSError:
                pass  # a full or unreachable path is loss, as on a real network
            seq += 1
        time.sleep(0.0005)


def recv(port: int, idle: float, max_seconds: float) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.1)
    seen: set[int] = set()
    duplicates = 0
    # One-way delay: every lab node shares this machine's clock, so arrival - send is exact.
    delays_us: list[float] = []
    deadline = time.monotonic() + max_seconds
    last = None
    while time.monotonic() < deadline:
        if last is not None and time.monotonic() - last > idle:
            break
        try:
            data = sock.recv(65535)
        except TimeoutError:
            continue
        if len(data) < _HEADER.size:
            continue
        seq, sent_ns = _HEADER.unpack_from(data)
        delays_us.append((time.time_ns() - sent_ns) / 1000)
        if seq in seen:
            duplicates += 1
        seen.add(seq)
        last = time.monotonic()
    delays_us.sort()

    def pct(q: float) -> float | None:
        return round(delays_us[min(len(delays_us) - 1, int(q * len(delays_us)))], 1) if delays_us else None

    return {"unique": len(seen), "duplicates": duplicates, "owd_p50_us": pct(0.5), "owd_p99_us": pct(0.99),
            "owd_p999_us": pct(0.999)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m topomirror.lab.probe")
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--port", type=int, default=9400)
    s.add_argument("--count", type=int, default=2000)
    s.add_argument("--rate", type=int, default=2000, help="datagrams per second")
    s.add_argument("--size", type=int, default=64)
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, default=9400)
    r.add_argument("--idle", type=float, default=1.0)
    r.add_argument("--max-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.mode == "send":
        send(args.to, args.port, args.count, args.rate, args.size)
    else:
        print(json.dumps(recv(args.port, args.idle, args.max_seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
