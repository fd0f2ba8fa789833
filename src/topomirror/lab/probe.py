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
    interval = 1.0 / rate
    start = time.perf_counter()
    for seq in range(count):
        target = start + seq * interval
        while (now := time.perf_counter()) < target:
            if target - now > 0.002:
                time.sleep(target - now - 0.001)
        sock.sendto(_HEADER.pack(seq, time.time_ns()) + padding, (to, port))


def recv(port: int, idle: float, max_seconds: float) -> dict[str, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.1)
    seen: set[int] = set()
    duplicates = 0
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
        seq, _ = _HEADER.unpack_from(data)
        if seq in seen:
            duplicates += 1
        seen.add(seq)
        last = time.monotonic()
    return {"unique": len(seen), "duplicates": duplicates}


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
