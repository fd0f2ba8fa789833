"""The bare UDP forwarder `bench dataplane` measures its floor with, on loopback."""

from __future__ import annotations

import argparse
import socket
import threading

import pytest

from topomirror.dataplane import _fastpath  # noqa: F401  (the C loop is under test: fail loudly without it)
from topomirror.lab import forward


@pytest.mark.parametrize("native", [True, False], ids=["c", "python"])
def test_forwarder_carries_each_datagram_to_its_target_unchanged(native: bool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        target.bind(("127.0.0.1", 0))
        target.settimeout(5.0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            listen = probe.getsockname()
        threading.Thread(target=forward.forward, args=(listen, [target.getsockname()]),
                         kwargs={"native": native}, daemon=True).start()
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


def _free_address() -> tuple[str, int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()


def _until_forwarding(sender: socket.socket, to: tuple[str, int], target: socket.socket) -> None:
    """Send a warm-up datagram (one number, passed once) until it comes out: the forwarders are bound."""
    target.settimeout(0.05)
    for _ in range(100):
        sender.sendto(b"\xff" * 16, to)
        try:
            target.recv(2048)
            return
        except TimeoutError:
            continue
    raise AssertionError("the forwarders never passed the warm-up datagram")


@pytest.mark.parametrize("native", [True, False], ids=["c", "python"])
def test_duplicating_then_first_copy_delivers_each_number_once(native: bool) -> None:
    """The duplicated yardstick on loopback: one forwarder copies to two, a second keeps the first
    copy of each number, so each numbered datagram arrives exactly once, in order."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        target.bind(("127.0.0.1", 0))
        source, merge = _free_address(), _free_address()
        threading.Thread(target=forward.forward, args=(merge, [target.getsockname()]),
                         kwargs={"first_copy": True, "native": native}, daemon=True).start()
        threading.Thread(target=forward.forward, args=(source, [merge, merge]), kwargs={"native": native},
                         daemon=True).start()
        _until_forwarding(sender, source, target)
        numbers = [i.to_bytes(16, "big") + b"payload" for i in range(50)]
        for datagram in numbers:
            sender.sendto(datagram, source)
        target.settimeout(1.0)
        received = []
        while True:
            try:
                received.append(target.recv(2048))
            except TimeoutError:
                break
        assert received == numbers


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:", ":9", "host:port"])
def test_address_needs_host_and_numeric_port(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        forward._address(text)


def test_address_parses_host_and_port() -> None:
    assert forward._address("10.0.0.1:9501") == ("10.0.0.1", 9501)


def test_native_first_copy_remembers_across_generations() -> None:
    """More numbers than one generation of the C table holds (32768): each passes once, and a copy
    of a number from the previous generation is still recognised."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        target.bind(("127.0.0.1", 0))
        target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        merge = _free_address()
        threading.Thread(target=forward.forward, args=(merge, [target.getsockname()]),
                         kwargs={"first_copy": True}, daemon=True).start()
        _until_forwarding(sender, merge, target)
        received = 0
        target.settimeout(1.0)
        for start in range(0, 40_000, 100):  # in slices the forwarder's receive buffer holds
            for i in range(start, start + 100):
                sender.sendto(i.to_bytes(16, "big"), merge)
            for _ in range(100):
                target.recv(64)
                received += 1
        for i in (39_999, 20_000):  # this generation, the previous one
            sender.sendto(i.to_bytes(16, "big"), merge)
        sender.sendto((50_000).to_bytes(16, "big"), merge)
        assert target.recv(64) == (50_000).to_bytes(16, "big")  # the repeats were dropped
        assert received == 40_000
