"""Numbered UDP probes for loss measurement: `python -m topomirror.lab.probe send|recv`.

Each datagram carries an 8-byte sequence number and an 8-byte send time (ns); the receiver
counts distinct sequence numbers and duplicates and prints one JSON line when it has been idle
for `--idle` seconds after the first datagram (or after `--max-seconds`).

One-way delay is reported twice: at the application (`owd_*`: the clock read when `recvmsg`
returned, so it includes the receiver's own wake-up and its queue behind earlier datagrams) and
at the receiving socket (`owd_kernel_*`: the kernel's arrival stamp, SO_TIMESTAMPNS, as OWAMP
measures one-way delay; what the path alone added).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

from topomirror.lab.rpc import percentile

_HEADER = struct.Struct("!QQ")
_TIMESPEC = struct.Struct("@qq")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; the cmsg carries a struct timespec


def send(to: str, port: int, count: int, rate: int, size: int, *, even: bool = False) -> dict[str, object]:
    """Send the datagrams; report how long each `sendto` took (`sendto_p50_us`, `sendto_p90_us`).

    On a veth network a send carries the datagram through every hop's stack to the receiving
    socket inside the system call, so its duration is what one hop costs the kernel here."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    padding = b"\0" * max(0, size - _HEADER.size)
    if even:
        _fine_timer_slack()
    took_ns: list[int] = []
    start = time.perf_counter()
    seq = 0
    while seq < count:
        due = min(count, int((time.perf_counter() - start) * rate) + 1)
        while seq < due:
            began = time.perf_counter_ns()
            try:
                sock.sendto(_HEADER.pack(seq, time.time_ns()) + padding, (to, port))
                took_ns.append(time.perf_counter_ns() - began)
            except OSError:
                pass  # a full or unreachable path is loss, as on a real network
            seq += 1
        if even:
            # Sleep until the next datagram is due: one datagram per wake-up while the wake-ups
            # keep up, so no datagram queues behind earlier ones of its own burst.
            time.sleep(max(0.0, start + seq / rate - time.perf_counter()))
        else:
            # Send whatever is due, then sleep a little: paced to the rate on average, in bursts
            # of at most ~1 ms worth, without waking for every datagram.
            time.sleep(0.0005)
    took_us = sorted(ns / 1000 for ns in took_ns)
    return {"sent": count, "sendto_p50_us": _rounded(percentile(took_us, 0.5)),
            "sendto_p90_us": _rounded(percentile(took_us, 0.9))}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _fine_timer_slack() -> None:
    """Let this process's sleeps end within 1 us of their deadline (Linux's default slack is 50 us)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, in ns
    except (OSError, AttributeError):
        pass


def recv(port: int, idle: float, max_seconds: float) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.1)
    seen: set[int] = set()
    duplicates = 0
    # One-way delay: every lab node shares this machine's clock, so arrival - send is exact.
    delays_us: list[float] = []
    kernel_us: list[float] = []
    deadline = time.monotonic() + max_seconds
    last = None
    while time.monotonic() < deadline:
        if last is not None and time.monotonic() - last > idle:
            break
        try:
            data, ancillary, _, _ = sock.recvmsg(65535, 64)
        except TimeoutError:
            continue
        if len(data) < _HEADER.size:
            continue
        now_ns = time.time_ns()
        seq, sent_ns = _HEADER.unpack_from(data)
        delays_us.append((now_ns - sent_ns) / 1000)
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                kernel_us.append((seconds * 1_000_000_000 + nanoseconds - sent_ns) / 1000)
        if seq in seen:
            duplicates += 1
        seen.add(seq)
        last = time.monotonic()
    delays_us.sort()
    kernel_us.sort()

    def pct(values: list[float], q: float) -> float | None:
        return _rounded(percentile(values, q))

    return {"unique": len(seen), "duplicates": duplicates,
            "owd_p50_us": pct(delays_us, 0.5), "owd_p99_us": pct(delays_us, 0.99), "owd_p999_us": pct(delays_us, 0.999),
            "owd_kernel_p50_us": pct(kernel_us, 0.5), "owd_kernel_p99_us": pct(kernel_us, 0.99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m topomirror.lab.probe")
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--port", type=int, default=9400)
    s.add_argument("--count", type=int, default=2000)
    s.add_argument("--rate", type=int, default=2000, help="datagrams per second")
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--even", action="store_true",
                   help="one datagram per wake-up, at even gaps (default: bursts of up to ~0.5 ms worth)")
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, default=9400)
    r.add_argument("--idle", type=float, default=1.0)
    r.add_argument("--max-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.mode == "send":
        print(json.dumps(send(args.to, args.port, args.count, args.rate, args.size, even=args.even)), flush=True)
    else:
        print(json.dumps(recv(args.port, args.idle, args.max_seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
