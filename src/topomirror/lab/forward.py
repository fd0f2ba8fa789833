"""A bare UDP forwarder: `python -m topomirror.lab.forward --listen HOST:PORT --to HOST:PORT`.

The yardstick of `bench dataplane`'s latency figures. Two of these in a row (one on the source
host, one on the destination) make the cheapest chain of two user-space hops there is: a blocking
`recv` and a `sendto` per datagram, no tunnel, no encryption, no event loop. What that chain adds
over the direct path is what any design that carries packets through a process on each host pays
on this machine (two process wake-ups and two trips through the kernel's stack); the tunnel's
figure is read against it.

The duplicated yardstick: `--to` given twice sends every datagram to both (the source host's
forwarder, one copy to the destination and one to a forwarder on the relay), and `--first-copy`
forwards only the first datagram of each number (its first 16 bytes: `lab.probe`'s sequence
number and send time, so one probe run's numbers never shadow the next's), as the tunnel's
destination keeps the first copy: three processes and two copies per datagram, still no tunnel
and no encryption.

The loop runs in C (`dataplane._fastpath.forward`: a `recv` and a `sendto` per copy with the
interpreter out of the way), so the floor is the hops' and the kernel's cost, not CPython's;
`--python` runs the same loop in Python (and is what runs where the extension is not built).
"""

from __future__ import annotations

import argparse
import socket
import sys

KEY_BYTES = 16  # a datagram's number: lab.probe's sequence number and send time
WINDOW = 32768  # numbers --first-copy remembers: between one and two windows' worth (as the C loop)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def forward(listen: tuple[str, int], to: list[tuple[str, int]], *, first_copy: bool = False,
            native: bool = True) -> None:
    inbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbound.bind(listen)
    outbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if native:
        try:
            from topomirror.dataplane import _fastpath
        except ImportError:
            pass
        else:
            _fastpath.forward(inbound.fileno(), outbound.fileno(), tuple(to), first_copy)
            return
    buffer = bytearray(65535)
    view = memoryview(buffer)
    seen: set[bytes] = set()
    older: set[bytes] = set()  # the previous window's numbers, still checked
    while True:
        size = inbound.recv_into(buffer)
        if first_copy:
            number = bytes(view[:KEY_BYTES])
            if number in seen or number in older:
                continue
            if len(seen) >= WINDOW:
                older, seen = seen, set()
            seen.add(number)
        for address in to:
            try:
                outbound.sendto(view[:size], address)
            except OSError:
                pass  # a full or unreachable next hop is loss, as on a real network


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m topomirror.lab.forward",
                                     description="Forward every UDP datagram received on --listen to --to.")
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT to receive on")
    parser.add_argument("--to", type=_address, required=True, action="append",
                        help="HOST:PORT to send each datagram to (twice: a copy to each)")
    parser.add_argument("--first-copy", action="store_true",
                        help="forward only the first datagram of each number (its first 16 bytes)")
    parser.add_argument("--python", action="store_true", help="the loop in Python instead of C")
    args = parser.parse_args(argv)
    try:
        forward(args.listen, args.to, first_copy=args.first_copy, native=not args.python)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
