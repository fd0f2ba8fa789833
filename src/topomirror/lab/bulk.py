"""A bulk HTTP server whose responses announce their size: `python -m topomirror.lab.bulk`.

GET /bytes/N answers N bytes with `Content-Length: N` in the response header, which is what
lets a node see a bulk transfer coming before its bytes do. Clients are real tools (curl).
GET /bytes/N?rate=R sends them at most R bytes per second, paced by the kernel's TCP stack
(SO_MAX_PACING_RATE): evenly spaced packets, not the bursts a client-side limit makes (curl's
--limit-rate reads in bursts, and each read opens the window for a line-rate burst that fills a
bottleneck's queue all the same).
"""

from __future__ import annotations

import argparse
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CHUNK = bytes(64 * 1024)
SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)  # Linux


def parse_request(path: str) -> tuple[int, int | None] | None:
    """`/bytes/N[?rate=R]` -> (N, R or None); None for anything else."""
    parts = urlsplit(path)
    segments = parts.path.strip("/").split("/")
    if len(segments) != 2 or segments[0] != "bytes" or not segments[1].isdigit():
        return None
    rates = parse_qs(parts.query).get("rate")
    if rates is None:
        return int(segments[1]), None
    if len(rates) != 1 or not rates[0].isdigit() or int(rates[0]) <= 0:
        return None
    return int(segments[1]), int(rates[0])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        request = parse_request(self.path)
        if request is None:
            self.send_error(404, "use /bytes/N or /bytes/N?rate=BYTES_PER_SECOND")
            return
        size, rate = request
        if rate is not None:
            self.connection.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, rate)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        remaining = size
        try:
            while remaining:
                piece = CHUNK[: min(len(CHUNK), remaining)]
                self.wfile.write(piece)
                remaining -= len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m topomirror.lab.bulk")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("0.0.0.0", args.port), _Handler)
    print(f"serving on {args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
