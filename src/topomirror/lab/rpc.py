"""Our own RPC load generator: `python -m topomirror.lab.rpc server|client`.

A request is a 12-byte header (magic, request id, response size) plus a body; the server answers
with a header and `response size` bytes. The client sends requests on a fixed schedule (open
loop: a slow response does not delay the next request, as real callers do not wait politely),
spread over several persistent TCP connections, and records every request's completion time.
It prints one JSON object: count, errors, p50/p99/p99.9 in ms and, with --timeline, each
request's start time and latency (for plots).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import time

_HEADER = struct.Struct("!IIi")  # magic, request id, response size (server) / status (reply)
MAGIC = 0x54_4D_52_50  # "TMRP"


async def _serve_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readexactly(_HEADER.size + 4)
            magic, request_id, response_size = _HEADER.unpack_from(head)
            (body_size,) = struct.unpack_from("!I", head, _HEADER.size)
            if magic != MAGIC or not 0 <= response_size <= 16 << 20 or body_size > 16 << 20:
                break
            if body_size:
                await reader.readexactly(body_size)
            writer.write(_HEADER.pack(MAGIC, request_id, response_size) + bytes(response_size))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(_serve_client, "0.0.0.0", port)
    print(json.dumps({"listening": port}), flush=True)
    async with server:
        await server.serve_forever()


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run_client(host: str, port: int, rate: float, seconds: float, connections: int,
                     request_size: int, response_size: int, timeout: float) -> dict[str, object]:
    streams = [await asyncio.open_connection(host, port) for _ in range(connections)]
    pending: dict[int, float] = {}
    latencies: list[tuple[float, float]] = []
    errors = 0
    start = time.perf_counter()
    wall_start = time.time()

    async def reader(index: int) -> None:
        nonlocal errors
        stream_reader = streams[index][0]
        try:
            while True:
                head = await stream_reader.readexactly(_HEADER.size)
                _, request_id, size = _HEADER.unpack(head)
                await stream_reader.readexactly(size)
                sent = pending.pop(request_id, None)
                if sent is not None:
                    latencies.append((sent - start, (time.perf_counter() - sent) * 1000))
        except (asyncio.IncompleteReadError, ConnectionError):
            errors += 1

    readers = [asyncio.create_task(reader(i)) for i in range(connections)]
    total = int(rate * seconds)
    body = bytes(request_size)
    for request_id in range(total):
        due = start + request_id / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        writer = streams[request_id % connections][1]
        pending[request_id] = time.perf_counter()
        writer.write(_HEADER.pack(MAGIC, request_id, response_size) + struct.pack("!I", request_size) + body)
    deadline = time.perf_counter() + timeout
    while pending and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    errors += len(pending)  # unanswered within the timeout
    for task in readers:
        task.cancel()
    for _, writer in streams:
        writer.close()
    values = sorted(latency for _, latency in latencies)
    return {
        "count": len(values), "errors": errors, "wall_start": wall_start,
        "p50_ms": percentile(values, 0.50), "p99_ms": percentile(values, 0.99),
        "p999_ms": percentile(values, 0.999), "max_ms": values[-1] if values else None,
        "timeline": [(round(t, 4), round(lat, 3)) for t, lat in sorted(latencies)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m topomirror.lab.rpc")
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, default=7000)
    c = sub.add_parser("client")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, default=7000)
    c.add_argument("--rate", type=float, default=200.0, help="requests per second")
    c.add_argument("--seconds", type=float, default=5.0)
    c.add_argument("--connections", type=int, default=4)
    c.add_argument("--request-size", type=int, default=200)
    c.add_argument("--response-size", type=int, default=1000)
    c.add_argument("--timeout", type=float, default=2.0, help="wait this long for the last answers")
    c.add_argument("--timeline", action="store_true", help="include every request's latency")
    args = parser.parse_args(argv)
    if args.mode == "server":
        asyncio.run(serve(args.port))
        return 0
    result = asyncio.run(run_client(args.host, args.port, args.rate, args.seconds, args.connections,
                                    args.request_size, args.response_size, args.timeout))
    if not args.timeline:
        result.pop("timeline")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
