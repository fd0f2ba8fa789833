"""A bulk HTTP server whose responses announce their size: `python -m topomirror.lab.bulk`.

GET /bytes/N answers N bytes with `Content-Length: N` in the response header, which is what
lets a node see a bulk transfer coming before its bytes do. Clients are real tools (curl).
"""

from __future__ import annotations

import argparse
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = bytes(64 * 1024)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        parts = self.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "bytes" or not parts[1].isdigit():
            self.send_error(404, "use /bytes/N")
            return
        size = int(parts[1])
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
