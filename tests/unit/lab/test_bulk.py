"""The bulk HTTP server: its requests, and its sender-side pacing on loopback."""

from __future__ import annotations

import threading
import time
import urllib.request
from http.server import ThreadingHTTPServer

import pytest

from topomirror.lab import bulk


@pytest.mark.parametrize(("path", "parsed"), [
    ("/bytes/1000", (1000, None)),
    ("/bytes/1000?rate=250000", (1000, 250000)),
    ("/bytes/x", None), ("/bytes/1000?rate=0", None), ("/bytes/1000?rate=fast", None),
    ("/other/1000", None), ("/bytes/1/2", None),
])
def test_requests_name_a_size_and_an_optional_rate(path: str, parsed: tuple[int, int | None] | None) -> None:
    assert bulk.parse_request(path) == parsed


def test_a_paced_response_announces_its_size_and_takes_as_long_as_its_rate_says() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), bulk._Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/bytes/3000000"

        def fetch(url: str) -> tuple[int, float, str | None]:
            started = time.monotonic()
            with urllib.request.urlopen(url, timeout=20) as response:
                length = response.headers.get("Content-Length")
                size = len(response.read())
            return size, time.monotonic() - started, length

        size, unpaced_s, length = fetch(base)
        assert size == 3_000_000 and length == "3000000"
        size, paced_s, _ = fetch(base + "?rate=3000000")  # 1 s at 3 MB/s
        assert size == 3_000_000
        # On loopback TCP's first window (ten 64 kB segments) leaves before pacing takes hold:
        # about 0.8 s of the 1 s; far from the unpaced transfer either way.
        assert paced_s >= 0.5 and paced_s > 10 * unpaced_s, (paced_s, unpaced_s)
    finally:
        server.shutdown()
        server.server_close()
