"""A bare UDP forwarder: `python -m topomirror.lab.forward --listen HOST:PORT --to HOST:PORT`.

The yardstick of `bench dataplane`'s latency figures. Two of these in a row (one on the source
host, one on the destination) make the cheapest chain of two user-space hops there is: a blocking
`recv` and a `sendto` per datagram, no tunnel, no encryption, no duplication, no event loop. What
that chain adds over the direct path is what any design that carries packets through a process
on each host pays on this machine (two process wake-ups and two trips through the kernel's
stack); the tunnel's figure is read against it.
"""

from __future__ import annotations

import argparse
import socket
import sys


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def forward(listen: tuple[str, int], to: tuple[str, int]) -> None:
    inbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbound.bind(listen)
    outbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    buffer = bytearray(65535)
    view = memoryview(buffer)
    while True:
        size = inbound.recv_into(buffer)
        try:
            outbound.sendto(view[:size], to)
        except OSError:
            pass  # a full or unreachable next hop is loss, as on a real network


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m topomirror.lab.forward",
                                     description="Forward every UDP datagram received on --listen to --to.")
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT to receive on")
    parser.add_argument("--to", type=_address, required=True, help="HOST:PORT to send each datagram to")
    args = parser.parse_args(argv)
    try:
        forward(args.listen, args.to)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
