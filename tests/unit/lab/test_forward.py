"""The bare UDP forwarder `bench dataplane` measures its floor with, on loopback."""

from __future__ import annotations

import argparse
import socket
import threading

import pytest

from topomirror.lab import forward


def test_forwarder_carries_each_datagram_to_its_target_unchanged() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        target.bind(("127.0.0.1", 0))
        target.settimeout(5.0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            listen = probe.getsockname()
        threading.Thread(target=forward.forward, args=(listen, target.getsockname()), daemon=True).start()
        payloads = [bytes([i]) * (i + 1) for i in range(5)]
        received: list[bytes] = []
        for payload in payloads:
            for _ in range(100):  # until the forwarder's socket is bound
                sender.sendto(payload, listen)
                try:
                    target.settimeout(0.05)
                    received.append(target.recv(2048))
                    break
                except TimeoutError:
                    continue
        assert received == payloads


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:", ":9", "host:port"])
def test_address_needs_host_and_numeric_port(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        forward._address(text)


def test_address_parses_host_and_port() -> None:
    assert forward._address("10.0.0.1:9501") == ("10.0.0.1", 9501)
